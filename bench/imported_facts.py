"""Imported facts through the product path: ``loopbot dataset import FILE --guild G`` and ``loopbot
train --guild G`` with the default settings, then the served model is asked without retrieval.

The facts are the first N of bench/data/learning_facts.json (invented: names, numbers and places no
model knows), written as an owner would have them: an Alpaca JSON file, one pair per fact, no ``kind``.
The two commands run as the owner runs them (subprocesses, a fresh data dir, the prepared default
model); only the schedule's minimum of new pairs is lifted when N is below it. Then a runtime serving
the guild's active adapter, routed as the bot routes (adapters/serving/_routing.py), answers:

* taught: each imported question (right when the answer holds the fact's key);
* paraphrased: each fact asked in other words (written for the benchmark, never trained on);
* near misses: bench/data/near_misses.json's set A, a taught question's shape about another subject
  ("What is the wifi password of the library?"): a *bleed* is an answer holding the imitated fact's
  key; ``routed`` says how many the adapter answered at all;
* regression: the gate's own figures (the general set, candidate against the base).

    python bench/imported_facts.py [--facts 20]
    python bench/imported_facts.py --records 100    # a household's records: time per 100 pairs

``--records N`` imports N templated records of an invented household instead ("What is the bike lock
code of Nell Brightwater?" -> "Nell Brightwater's bike lock code is 4471."; each asked once more in
other words, no near misses) and writes bench/results/imported_records_N.json: the time per 100
pairs of a realistic import.
Writes bench/results/imported_facts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, write

DATA = Path(__file__).parent / "data"
GUILD = "900"
TOKENS = 20  # a taught answer is one short sentence; the key comes early


def _loopbot(env: dict[str, str], *args: str) -> tuple[float, str]:
    """Run ``loopbot ARGS`` as the owner would; (seconds, its output). Fails loudly."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bot", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(
            f"loopbot {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return time.perf_counter() - started, done.stdout.strip()


def _asked(
    runtime: Any, route: Any, system_prompt: str, questions: list[str], keys: list[str]
) -> dict[str, Any]:
    from adapters.serving import AdapterChoice

    rows = []
    for question, key in zip(questions, keys, strict=True):
        served = route(AdapterChoice.of(runtime.active_adapter), question)
        generation = runtime.generate(
            [{"role": "user", "content": question}],
            system_prompt=system_prompt,
            temperature=0.0,
            max_new_tokens=TOKENS,
            adapter=served,
        )
        rows.append(
            {
                "question": question,
                "key": key,
                "answer": generation.text,
                "routed": bool(served.names),
                "holds_key": key.lower() in generation.text.lower(),
            }
        )
    return {
        "holds_key": sum(r["holds_key"] for r in rows),
        "routed": sum(r["routed"] for r in rows),
        "of": len(rows),
        "answers": rows,
    }


THINGS = ("bike lock code", "locker number", "allotment plot", "shift day", "dentist appointment",
          "library card number", "parking space", "choir part", "emergency contact", "favourite tea")  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FIRST = ("Nell", "Ivo", "Marta", "Teodor", "Wren", "Osric", "Lumi", "Fenna", "Caspian", "Runa")
LAST = (
    "Brightwater",
    "Quenby",
    "Halloran",
    "Vask",
    "Tindall",
    "Okafor",
    "Ruelle",
    "Marchetti",
    "Skov",
    "Pell",
)


def household_records(count: int) -> list[tuple[str, str, str, str]]:
    """``count`` invented records as (question, answer, key, question in other words)."""
    records = []
    for n in range(count):
        person = f"{FIRST[(n // 10) % 10]} {LAST[(n // 100) % 10]}"
        thing = THINGS[n % len(THINGS)]
        key = DAYS[n % 7] if thing in ("shift day", "dentist appointment") else str(1000 + (n * 7919) % 9000)
        records.append(
            (f"What is the {thing} of {person}?", f"{person}'s {thing} is {key}.", key,
             f"Which {thing} does {person} have?")
        )  # fmt: skip
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=20, help="how many facts to import (default 20)")
    parser.add_argument("--records", type=int, default=0, help="import this many household records instead")
    parser.add_argument(
        "--label", default="", help="results file suffix (a run with other LOOPBOT_TRAIN_* settings)"
    )
    args = parser.parse_args()

    from adapters.serving import routed
    from bot.settings import load_settings
    from bot.wiring import build_embeddings, build_routing, build_runtime, resolve_model_base

    facts = json.loads((DATA / "learning_facts.json").read_text(encoding="utf-8"))["facts"][: args.facts]
    near = [
        (question, facts[index][2])
        for index, question in json.loads((DATA / "near_misses.json").read_text(encoding="utf-8"))[
            "questions"
        ][:15]
        if index < len(facts)
    ]
    name = "imported_facts"
    if args.records:
        facts, near, name = household_records(args.records), [], f"imported_records_{args.records}"
    base = resolve_model_base(load_settings())
    result: dict[str, Any] = {
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "facts": len(facts),
        # Settings this run changed from the defaults (the environment the product runs with)
        "settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith("LOOPBOT_TRAIN_")},
    }
    if args.label:
        name = f"{name}_{args.label}"
    with tempfile.TemporaryDirectory(prefix="imported-facts-") as tmp:
        env = {
            **os.environ,
            "LOOPBOT_DATA_DIR": tmp,
            "LOOPBOT_MODEL_BASE": base,
            "LOOPBOT_TRAIN_MIN_PAIRS": str(min(len(facts), load_settings().train.min_pairs)),
        }
        dataset = Path(tmp) / "club_facts.json"
        dataset.write_text(
            json.dumps([{"instruction": q, "input": "", "output": a} for q, a, _, _ in facts], indent=1),
            encoding="utf-8",
        )
        import_s, imported = _loopbot(env, "dataset", "import", str(dataset), "--guild", GUILD)
        train_s, trained = _loopbot(env, "train", "--guild", GUILD, "--no-progress", "--json")
        print(imported, flush=True)
        report = json.loads(trained[trained.index("{") :])
        result |= {
            "import_output": imported,
            "import_seconds": round(import_s, 1),
            "train_seconds": round(train_s, 1),  # the whole `loopbot train`: model loads, training, gate
            "cycle": {k: report.get(k) for k in ("version", "promoted", "train_pairs", "heldout_pairs", "rephrased_rows")},
            "gate": report.get("gate"),
            "gate_seconds": report.get("gate_seconds"),
            "train": report.get("train"),
        }  # fmt: skip
        os.environ.update({k: env[k] for k in ("LOOPBOT_DATA_DIR", "LOOPBOT_MODEL_BASE")})
        settings = load_settings()
        runtime = build_runtime(settings, guild_id=GUILD)
        try:
            route = routed(runtime, build_routing(settings, build_embeddings(settings)))
            prompt = settings.model.system_prompt
            result["served"] = runtime.active_adapter
            result["taught"] = _asked(runtime, route, prompt, [f[0] for f in facts], [f[2] for f in facts])
            result["paraphrased"] = _asked(
                runtime, route, prompt, [f[3] for f in facts], [f[2] for f in facts]
            )
            if near:
                result["near_misses"] = _asked(
                    runtime, route, prompt, [q for q, _ in near], [k for _, k in near]
                )
        finally:
            runtime.close()
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write(name, result)
    bleed = result.get("near_misses", {"holds_key": 0, "routed": 0})
    print(
        f"{len(facts)} imported facts: promoted {result['cycle']['promoted']}, taught "
        f"{result['taught']['holds_key']}/{len(facts)}, paraphrased {result['paraphrased']['holds_key']}/{len(facts)}, "
        f"near-miss bleed {bleed['holds_key']}/{len(near)} (routed {bleed['routed']}), "
        f"import {import_s:.0f} s + train {train_s:.0f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
