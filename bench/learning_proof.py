"""Learning proof through the product path: corrections → ``run_training_cycle`` (train → gate →
promote → hot swap) → the served model answers without retrieval.

Facts (bench/data/learning_facts.json) are invented: names, numbers and places no model knows. Each
is asked once; the bot's wrong answer gets a trusted correction in a real feedback log, so the pairs
come out of ``FeedbackLog.pairs()`` exactly as in production, and the cycle runs with the default
``LOOPBOT_TRAIN_*`` recipe and gate (only the schedule's minimums are lifted). After it, the serving
runtime (fast kernel) is asked, without retrieval, each question routed as the bot routes it
(adapters/serving/_routing.py: the adapter answers only questions near its corrections; each answer records which):

* taught: every corrected question (an answer is correct when it contains the fact's key);
* paraphrased: each taught fact asked in other words (written for the benchmark, never trained on);
* regression: the fixed general-question set;
* retained (second round): the first round's facts after a second round of new ones;
* rejected back: of the taught and paraphrased asks, how many gave the answer the correction replaced
  (adapters.gate.brings_back), with ``--preference dpo`` trained against it or without (off).

Runs: N = 5, 10, 20, 40 corrections in one round each (fresh data), and two rounds of 20.

    python bench/learning_proof.py [--sizes 5,10,20,40] [--no-rounds] [--fresh] [--preference off|dpo]

Writes bench/results/learning_proof.json and bench/results/learning_proof.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, machine, write

FACTS = [
    tuple(f)
    for f in json.loads((Path(__file__).parent / "data" / "learning_facts.json").read_text())["facts"]
]
GUILD = "1000000000000000001"
BASE = ""  # the prepared default model of the caller's data dir (main() sets it)
FACT_TOKENS = 20  # a taught answer is one short sentence; the key comes early
FROM_ACTIVE: bool | None = None  # round 2 continues round 1's adapter as settings say; --fresh: it does not
PREFERENCE = "off"  # LOOPBOT_TRAIN_PREFERENCE of the runs (--preference)


def _ask(loop: Loop, question: str) -> Any:
    """The served model, no retrieval: the active adapter as routing leaves it for this question."""
    from adapters.serving import AdapterChoice

    return loop.runtime.generate(
        [{"role": "user", "content": question}],
        system_prompt=loop.system_prompt,
        temperature=0.0,
        max_new_tokens=FACT_TOKENS,
        adapter=loop.route(AdapterChoice.of(loop.runtime.active_adapter), question),
    )


def _score(loop: Loop, facts: list[tuple], column: int = 0) -> dict[str, Any]:
    from adapters.gate import brings_back

    rows = []
    for fact in facts:
        generation = _ask(loop, fact[column])
        rejected = loop.rejected.get(fact[0], "")  # the answer its correction replaced
        rows.append(
            {
                "question": fact[column],
                "key": fact[2],
                "answer": generation.text,
                "served": generation.adapter,  # None: routing gave it to the base
                "correct": fact[2].lower() in generation.text.lower(),
                "rejected_back": bool(rejected)
                and brings_back(generation.text, fact[1], rejected, fact[column]),
            }
        )
    return {
        "accuracy": round(sum(r["correct"] for r in rows) / max(1, len(rows)), 3),
        "routed_to_adapter": sum(r["served"] is not None for r in rows),
        "rejected_back": sum(r["rejected_back"] for r in rows),
        "answers": rows,
    }


class Loop:
    """One community: a data dir, its feedback log and the serving runtime, as the CLI builds them."""

    def __init__(self, root: Path) -> None:
        from adapters.serving import routed
        from bot.settings import load_settings
        from bot.wiring import build_embeddings, build_feedback_log, build_routing, build_runtime

        os.environ["LOOPBOT_DATA_DIR"] = str(root)
        settings = load_settings()
        train = settings.train.model_copy(
            update={"min_pairs": 1, "min_interval_hours": 0.0, "preference": PREFERENCE}
        )
        self.rejected: dict[str, str] = {}  # question -> the answer its correction replaced
        model = settings.model.model_copy(update={"base": BASE})
        self.settings = settings.model_copy(update={"train": train, "model": model})
        self.log = build_feedback_log(self.settings)
        self.runtime = build_runtime(self.settings, guild_id=GUILD)
        self.system_prompt = self.settings.model.system_prompt
        self.embeddings = build_embeddings(self.settings)  # the knowledge base's, as the bot routes
        self.route = routed(self.runtime, build_routing(self.settings, self.embeddings))

    def correct(self, facts: list[tuple]) -> float:
        """Ask each fact once and correct the answer; returns the share answered right before."""
        right = 0
        for question, correction, key, _ in facts:
            answer = _ask(self, question).text
            right += key.lower() in answer.lower()
            self.rejected[question] = answer
            answer_id = self.log.record_answer(
                guild_id=GUILD, channel_id="1", user_id="2", question=question, context="", chunk_ids=[],
                prompt="", prompt_version="bench", adapter=self.runtime.active_adapter, answer=answer,
            )  # fmt: skip
            self.log.add_correction(answer_id, author_id="2", text=correction, message_id=None, trusted=True)
        return right / len(facts)

    def cycle(self, label: str) -> dict[str, Any]:
        """Run the product's cycle; its gate report (every set, both adapters) is kept as
        bench/results/learning_proof_<label>.csv."""
        import shutil

        from bot.usecases.training import run_training_cycle
        from bot.wiring import build_training_parts

        parts = build_training_parts(
            self.settings, self.log, guild_id=GUILD, runtime=self.runtime, embeddings=self.embeddings
        )
        report = run_training_cycle(self.settings, parts, show_progress=True, from_active=FROM_ACTIVE)
        train_s = report.train_metrics.get("train_seconds", 0.0)
        if report.gate is not None and report.gate.report_path is not None:
            shutil.copyfile(report.gate.report_path, RESULTS / f"learning_proof_{label}.csv")
        return {
            "version": report.version,
            "promoted": report.promoted,
            "gate": report.gate.metrics() if report.gate else None,
            "train_pairs": report.train_pairs,
            "rephrased_rows": report.rephrased_rows,
            "train": report.train_metrics,
            "train_and_gate_s": round(report.seconds, 1),
            "gate_s": round(report.gate_seconds, 1),
            # starting the training process and loading the model there, loading the adapters here
            "other_s": round(report.seconds - train_s - report.gate_seconds, 1),
        }

    def measure(self, taught: list[tuple]) -> dict[str, Any]:
        from adapters.gate import accuracy, run_regression

        reg = run_regression(self.runtime, system_prompt=self.system_prompt, route=self.route)
        return {
            "adapter": self.runtime.active_adapter,
            "taught": _score(self, taught),
            "paraphrased": _score(self, taught, column=3),
            "regression_accuracy": round(accuracy(reg), 3),
            "regression_routed_to_adapter": sum(r.adapter is not None for r in reg),
        }

    def close(self) -> None:
        self.runtime.close()
        self.log.close()


def one_round(size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="learning-proof-") as tmp:
        loop = Loop(Path(tmp))
        try:
            before = loop.measure(FACTS[:size])
            loop.correct(FACTS[:size])
            cycle = loop.cycle(str(size))
            after = loop.measure(FACTS[:size])
        finally:
            loop.close()
    return {"corrections": size, "preference": PREFERENCE, "before": before, "cycle": cycle, "after": after}


def two_rounds(size: int) -> dict[str, Any]:
    first, second = FACTS[:size], FACTS[size : 2 * size]
    with tempfile.TemporaryDirectory(prefix="learning-proof-") as tmp:
        loop = Loop(Path(tmp))
        try:
            loop.correct(first)
            cycle1 = loop.cycle(f"{size}x2_round1")
            after1 = loop.measure(first)
            loop.correct(second)
            cycle2 = loop.cycle(f"{size}x2_round2")
            after2 = loop.measure(second)
            retained = _score(loop, first)
        finally:
            loop.close()
    return {
        "corrections_per_round": size,
        "round1": {"cycle": cycle1, "after": after1},
        "round2": {"cycle": cycle2, "after": after2, "retained_round1": retained},
    }


def _summary(run: dict[str, Any]) -> str:
    a = run["after"]
    return (
        f"N={run['corrections']}: promoted {run['cycle']['promoted']}, taught {a['taught']['accuracy']:.2f}, "
        f"paraphrased {a['paraphrased']['accuracy']:.2f}, regression {run['before']['regression_accuracy']:.2f} -> "
        f"{a['regression_accuracy']:.2f}, rejected back {a['taught']['rejected_back']}+"
        f"{a['paraphrased']['rejected_back']}/{2 * run['corrections']}, preference {run.get('preference', 'off')}, "
        f"train+gate {run['cycle']['train_and_gate_s']:.0f} s"
    )


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(
        (r for r in result["rounds"] if r.get("preference", "off") == "off"), key=lambda r: r["corrections"]
    )
    xs = [r["corrections"] for r in runs]
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    ax.plot(
        xs, [r["after"]["taught"]["accuracy"] for r in runs], "o-", label="taught facts answered (served)"
    )
    ax.plot(xs, [r["after"]["paraphrased"]["accuracy"] for r in runs], "^-", label="asked in other words")
    ax.plot(xs, [r["after"]["regression_accuracy"] for r in runs], "s--", label="regression set (after)")
    ax.plot(
        xs,
        [r["before"]["regression_accuracy"] for r in runs],
        ":",
        color="grey",
        label="regression set (base)",
    )
    refused = [r for r in runs if not r["cycle"]["promoted"]]
    if refused:  # what a refused candidate had learned and what it cost, as the gate measured it
        gates = [r["cycle"]["gate"] or {} for r in refused]
        xs_refused = [r["corrections"] for r in refused]
        ax.plot(xs_refused, [g.get("taught_candidate", 0) for g in gates], "x", color="C0", ms=9,
                label="taught, refused candidate (gate)")  # fmt: skip
        ax.plot(xs_refused, [g.get("regression_candidate", 0) for g in gates], "x", color="C2", ms=9,
                label="regression set, refused candidate (gate)")  # fmt: skip
        for r, gate in zip(refused, gates, strict=True):
            rule = (gate.get("reason") or "").split(" ", 2)[:2]
            ax.annotate("refused:\n" + " ".join(rule), (r["corrections"], 0.05), fontsize=6, ha="center")
    if result.get("two_rounds"):
        two = result["two_rounds"]
        n = two["corrections_per_round"]
        ax.plot(
            [n],
            [two["round2"]["retained_round1"]["accuracy"]],
            "D",
            ms=9,
            label=f"round 1 kept after round 2 ({n}+{n})",
        )
        promoted = "" if two["round2"]["cycle"]["promoted"] else " (not promoted)"
        ax.plot(
            [n], [two["round2"]["after"]["taught"]["accuracy"]], "P", ms=9, label=f"round 2 taught{promoted}"
        )
    ax.set_xlabel("corrections (each asked once) in the round")
    ax.set_ylabel("share answered (no retrieval)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(xs)
    ax.set_title(
        "loopbot: train → gate → promote → serve (SmolLM2-135M GPTQ + LoRA, 2 CPU cores)", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _same_run(run: dict[str, Any], sizes: list[int]) -> bool:
    """Whether this run measures ``run`` again (a size in ``sizes`` with the same preference setting)."""
    return run["corrections"] in sizes and run.get("preference", "off") == PREFERENCE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,10,20,40", help="corrections per one-round run ('': none)")
    parser.add_argument("--no-rounds", action="store_true", help="skip the two-round run (20 + 20)")
    parser.add_argument("--fresh", action="store_true", help="round 2 trains a fresh adapter, not round 1's")
    parser.add_argument(
        "--preference", choices=("off", "dpo"), default="off", help="LOOPBOT_TRAIN_PREFERENCE"
    )
    args = parser.parse_args()
    from bot.settings import load_settings
    from bot.wiring import resolve_model_base

    global BASE, FROM_ACTIVE, PREFERENCE
    BASE = resolve_model_base(load_settings())
    PREFERENCE = args.preference
    FROM_ACTIVE = False if args.fresh else None
    load = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "load_average_before": load, "rounds": []}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    earlier = RESULTS / "learning_proof.json"
    if earlier.is_file():  # keep what this run does not measure again
        kept = json.loads(earlier.read_text(encoding="utf-8"))
        result["rounds"] = [r for r in kept.get("rounds", []) if not _same_run(r, sizes)]
        if args.no_rounds and "two_rounds" in kept:
            result["two_rounds"] = kept["two_rounds"]
    if not args.no_rounds:
        result["two_rounds"] = two_rounds(20)
        r2 = result["two_rounds"]["round2"]
        print(f"two rounds: round 2 taught {r2['after']['taught']['accuracy']:.2f}, round 1 kept "
              f"{r2['retained_round1']['accuracy']:.2f}, promoted {r2['cycle']['promoted']}", flush=True)  # fmt: skip
    if not sizes:
        write("learning_proof", result)
        _plot(result, RESULTS / "learning_proof.png")
    for size in sizes:
        run = one_round(size)
        print(_summary(run), flush=True)
        result["rounds"] = [r for r in result["rounds"] if not _same_run(r, [size])] + [run]
        result["total_seconds"] = round(time.perf_counter() - started, 1)
        write("learning_proof", result)
        _plot(result, RESULTS / "learning_proof.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
