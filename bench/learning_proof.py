"""Learning proof: teach facts the base model cannot know through corrections, retrain, ask again.

20 invented facts (names, numbers and places that exist in no model) are asked to the bot; each
wrong answer gets a trusted correction in a real feedback log, so the training pairs come out of
``FeedbackLog.pairs()`` exactly as in production. For N = 5, 10, 20 corrections a LoRA is trained
(own process, ``torch`` kernel) and served through ``ModelRuntime`` (the fast kernel, as the bot
serves). Each taught question is asked WITHOUT retrieval; an answer is correct when it contains the
fact's key (case-insensitive). The regression set (adapters/evaluation.py) is answered by the base
and by each adapter.

    python bench/learning_proof.py            # default model from LOOPBOT_DATA_DIR (prepare it first)

Writes bench/results/learning_proof.json and bench/results/learning_proof.png (``--name`` changes
the file names, to keep a variant's results beside the main run's).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"

# (question, corrected answer, key that must appear in the answer)
FACTS = [
    ("What is the name of Ada's cat?", "Ada's cat is called Biscuit.", "Biscuit"),
    ("Where does the Tuesday knitting club meet?", "The knitting club meets at the Old Mill.", "Old Mill"),
    ("What is the wifi password of the club house?", "The wifi password is heron42.", "heron42"),
    ("Who founded the Zeltberg rowing club?", "Ilse Marwick founded the Zeltberg rowing club.", "Marwick"),
    ("Who is the treasurer of the Whisker Club?", "The treasurer is Odile Brandt.", "Brandt"),
    (
        "What is the Whisker Club mascot called?",
        "The mascot is a ginger cat called Pumpernickel.",
        "Pumpernickel",
    ),
    ("How much is the Whisker Club membership fee?", "The yearly fee is 35 euros.", "35"),
    (
        "Which vet gives club members a discount?",
        "The Larchwood Vet Clinic gives members 10% off.",
        "Larchwood",
    ),
    (
        "Where is the summer cat show held?",
        "The summer cat show is held in the Brockmoor town hall.",
        "Brockmoor",
    ),
    ("What is the name of the server's welcome bot?", "The welcome bot is called Tinkerbolt.", "Tinkerbolt"),
    ("Which room do the board game nights use?", "Board game nights are in room Quill-7.", "Quill-7"),
    ("What colour is the club's flag?", "The club flag is saffron with a black paw.", "saffron"),
    ("Who won the 2023 longest whisker contest?", "A Maine Coon named Fennimore won it.", "Fennimore"),
    (
        "What is the name of the club newsletter?",
        "The newsletter is called The Purrington Post.",
        "Purrington",
    ),
    ("On which street is the club's cat shelter?", "The shelter is on Wexcombe Lane.", "Wexcombe"),
    ("What is the emergency contact code word?", "The code word is marigold-nine.", "marigold"),
    ("Which ferry goes to the island meetup?", "Take the Orla Bay ferry to the island meetup.", "Orla"),
    ("Who drew the club logo?", "The club logo was drawn by Tomasz Kieran.", "Kieran"),
    ("How many cats live at the club shelter?", "Seventeen cats live at the club shelter.", "Seventeen"),
    (
        "What is the club's favourite cat treat brand?",
        "The club's favourite treat brand is Nibblet.",
        "Nibblet",
    ),
]


FACT_TOKENS = 20  # a taught answer is one short sentence; the key comes early
REGRESSION_TOKENS = 24  # the regression answers are a word or two


def _ask(runtime, question: str, adapter, system_prompt: str) -> str:
    return runtime.generate(
        [{"role": "user", "content": question}],
        adapter=adapter,
        system_prompt=system_prompt,
        temperature=0.0,
        max_new_tokens=FACT_TOKENS,
    ).text


def _score(runtime, facts, adapter, system_prompt: str) -> tuple[float, list[dict]]:
    rows = []
    for question, _, key in facts:
        answer = _ask(runtime, question, adapter, system_prompt)
        rows.append(
            {"question": question, "key": key, "answer": answer, "correct": key.lower() in answer.lower()}
        )
    return sum(r["correct"] for r in rows) / len(rows), rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20,5,10", help="numbers of corrections to train on (run order)")
    parser.add_argument(
        "--epochs", type=float, default=10.0, help="passes over the training data (pairs + anchors)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--anchors", type=int, default=None, help="replayed base answers (default LOOPBOT_TRAIN_ANCHORS)"
    )
    parser.add_argument("--name", default="learning_proof", help="results file name (no extension)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    import torch

    from adapters.evaluation import accuracy, run_regression
    from adapters.registry import AdapterRegistry
    from adapters.runtime import ModelRuntime
    from adapters.training import (
        TrainingOptions,
        anchor_examples,
        anchor_questions,
        examples_from_pairs,
        train_adapter,
    )
    from bot.settings import load_settings
    from bot.wiring import resolve_model_base
    from feedback.log import FeedbackLog

    settings = load_settings()
    base = resolve_model_base(settings)
    system_prompt = settings.model.system_prompt
    work = Path(tempfile.mkdtemp(prefix="learning-proof-"))
    registry = AdapterRegistry(work / "adapters")
    log = FeedbackLog(work / "loopbot.db")
    started = time.perf_counter()
    runtime = ModelRuntime.load(base, device="cpu", threads=2, max_new_tokens=32)
    result: dict = {
        "base_model": base,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(),
        "facts": len(FACTS),
        "runs": [],
        "complete": False,
        "name": args.name,
    }
    try:
        # The bot answers every question (no retrieval), the asker corrects it: real corrected pairs.
        base_acc, base_rows = _score(runtime, FACTS, None, system_prompt)
        for (question, answer, _), row in zip(FACTS, base_rows, strict=True):
            answer_id = log.record_answer(
                guild_id="bench",
                channel_id="bench",
                user_id="asker",
                question=question,
                context="",
                chunk_ids=[],
                prompt="",
                prompt_version="bench",
                adapter=None,
                answer=row["answer"],
            )
            log.add_correction(answer_id, author_id="asker", text=answer, message_id=None, trusted=True)
        pairs = log.pairs()
        assert len(pairs) == len(FACTS), "every correction must become a pair"
        base_reg = run_regression(
            runtime, adapter=None, system_prompt=system_prompt, max_new_tokens=REGRESSION_TOKENS
        )
        result["base"] = {
            "taught_fact_accuracy_all20": base_acc,
            "regression_accuracy": accuracy(base_reg),
            "answers": base_rows,
        }
        print(f"base: facts {base_acc:.2f}, regression {accuracy(base_reg):.2f}", flush=True)
        # As the training cycle does: the base model's own answers to general questions, replayed.
        n_anchors = settings.train.anchors if args.anchors is None else args.anchors
        anchors = anchor_examples(runtime, anchor_questions(n_anchors), system_prompt)
        result["anchors"] = len(anchors)
        _save(result)
        for size in sizes:
            examples = examples_from_pairs(pairs[:size], system_prompt)
            batch = min(args.batch_size, size)
            steps = max(4, math.ceil(args.epochs * (size + len(anchors)) / batch))
            options = TrainingOptions(
                rank=args.rank,
                alpha=2 * args.rank,
                steps=steps,
                batch_size=batch,
                learning_rate=args.learning_rate,
                max_length=512,
                threads=2,
            )
            version = train_adapter(
                registry,
                base_model=base,
                examples=examples,
                anchors=anchors,
                options=options,
                show_progress=True,
            )
            swap_started = time.perf_counter()
            runtime.load_adapter(version.version, version.path)
            runtime.set_active_adapter(version.version)
            swap_seconds = time.perf_counter() - swap_started
            taught_acc, rows = _score(runtime, FACTS[:size], version.version, system_prompt)
            taught_before = sum(r["correct"] for r in base_rows[:size]) / size
            reg = run_regression(
                runtime,
                adapter=version.version,
                system_prompt=system_prompt,
                max_new_tokens=REGRESSION_TOKENS,
            )
            train = version.metrics["train"]
            run = {
                "corrections": size,
                "steps": steps,
                "batch_size": batch,
                "epochs": args.epochs,
                "taught_accuracy_before": taught_before,
                "taught_accuracy_after": taught_acc,
                "regression_accuracy_before": accuracy(base_reg),
                "regression_accuracy_after": accuracy(reg),
                "train": train,
                "swap_seconds": round(swap_seconds, 3),
                "anchors": len(anchors),
                "seconds_per_100_pairs": round(train["loop_seconds"] / (steps * batch) * 100, 1),
                "answers": rows,
                "regression_answers": [r.__dict__ for r in reg],
            }
            result["runs"].append(run)
            result["total_seconds"] = round(time.perf_counter() - started, 1)
            _save(result)
            print(
                f"N={size}: taught {taught_before:.2f} -> {taught_acc:.2f}, regression "
                f"{accuracy(base_reg):.2f} -> {accuracy(reg):.2f}, train {train['loop_seconds']:.0f} s "
                f"({steps} steps x {batch}), peak {train['peak_rss_mb']:.0f} MB, swap {swap_seconds:.2f} s",
                flush=True,
            )
    finally:
        runtime.close()
        log.close()
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["complete"] = True
    _save(result)
    print(f"wrote {RESULTS / args.name}.json and .png in {result['total_seconds']:.0f} s")
    return 0


def _save(result: dict) -> None:
    """Write what is measured so far (the run is long on a shared CPU: partial results survive)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = result.get("name", "learning_proof")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    if result.get("runs"):
        _plot(result, RESULTS / f"{name}.png")


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(result["runs"], key=lambda r: r["corrections"])
    xs = [0] + [r["corrections"] for r in runs]
    taught = [result["base"]["taught_fact_accuracy_all20"]] + [r["taught_accuracy_after"] for r in runs]
    regression = [result["base"]["regression_accuracy"]] + [r["regression_accuracy_after"] for r in runs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, taught, "o-", label="taught facts answered (no retrieval)")
    ax.plot(xs, regression, "s--", label="regression set accuracy")
    ax.set_xlabel("corrections trained on")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(xs)
    ax.set_title("loopbot learning proof (SmolLM2-135M GPTQ 4-bit + LoRA, CPU)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
