"""Training recipes against the gate: N corrections through the product cycle, one recipe each.

Each run is a fresh community (as in bench/learning_proof.py): N invented facts asked once and
corrected, then ``run_training_cycle`` with the default settings plus the run's overrides of
``LOOPBOT_TRAIN_*`` (JSON), and the gate's sets are reported: taught facts answered, and the
regression set (70 gradable general questions) answered by the base and by the candidate. The gate's
CSV of each run is kept beside the results, to see which general answers a recipe costs.

    python bench/recipe_sweep.py LABEL '{"learning_rate": 3e-4}' [LABEL JSON ...] [--size 5]

Appends to bench/results/recipe_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import learning_proof as proof
from _common import RESULTS, machine


def run(size: int, label: str, overrides: dict[str, Any]) -> dict[str, Any]:
    from bot.usecases.training import run_training_cycle
    from bot.wiring import build_training_parts

    with tempfile.TemporaryDirectory(prefix="recipe-sweep-") as tmp:
        loop = proof.Loop(Path(tmp))
        try:
            train = loop.settings.train.model_copy(update=overrides)
            loop.settings = loop.settings.model_copy(update={"train": train})
            loop.correct(proof.FACTS[:size])
            parts = build_training_parts(loop.settings, loop.log, guild_id=proof.GUILD, runtime=loop.runtime)
            report = run_training_cycle(loop.settings, parts, show_progress=False)
        finally:
            loop.close()
        gate = report.gate.metrics() if report.gate else {}
        if report.gate is not None and report.gate.report_path is not None:
            shutil.copy(report.gate.report_path, RESULTS / f"recipe_sweep_{label}.csv")
    return {
        "label": label,
        "corrections": size,
        "overrides": overrides,
        "promoted": report.promoted,
        "reason": gate.get("reason"),
        "taught": gate.get("taught_candidate"),
        "regression_base": gate.get("regression_active"),
        "regression_candidate": gate.get("regression_candidate"),
        "train_s": report.train_metrics.get("train_seconds"),
        "steps": report.train_metrics.get("steps"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL JSON pairs: a name and LOOPBOT_TRAIN_* overrides")
    parser.add_argument("--size", type=int, default=5, help="corrections per run (default 5)")
    args = parser.parse_args()
    if len(args.runs) % 2:
        parser.error("give LABEL JSON pairs")
    from bot.settings import load_settings
    from bot.wiring import resolve_model_base

    proof.BASE = resolve_model_base(load_settings())
    path = RESULTS / "recipe_sweep.json"
    result = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"runs": []}
    result["machine"] = machine()
    for label, overrides in zip(args.runs[::2], args.runs[1::2], strict=True):
        started = time.perf_counter()
        row = run(args.size, label, json.loads(overrides))
        row["seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps(row), flush=True)
        result["runs"] = [r for r in result["runs"] if r["label"] != label] + [row]
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
