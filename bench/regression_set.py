"""Choose the general regression questions: those the default model answers, fp32 and 4-bit alike.

Each candidate (bench/data/regression_candidates.csv, hand-written: capitals, numbers, science,
animals, people; none an anchor's topic) is asked of the plain fp32 model and of the 4-bit model as
served, the 4-bit one twice in two orders (another batch mix: the noise of one run). A question
answered by all three goes into ``adapters/data/regression_general.csv`` (``--write``): a regression
set measures what a candidate loses, so it holds what the model knows. Writes
bench/results/regression_set.json with every answer and the run-to-run flips.

    python bench/regression_set.py [--write] [--models DIR]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from _common import machine, models_dir, write

CANDIDATES = Path(__file__).resolve().parent / "data" / "regression_candidates.csv"
TARGET = Path(__file__).resolve().parent.parent / "adapters" / "data" / "regression_general.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write the chosen questions to {TARGET.name}")
    parser.add_argument("--models", type=Path, default=None, help="models dir (default: from settings)")
    args = parser.parse_args()
    from adapters.gate import core_regression_questions, load_regression_questions, run_regression
    from adapters.model import default_model_dir, plain_model_dir
    from adapters.serving import ModelRuntime
    from bot.settings import DEFAULT_SYSTEM_PROMPT

    fixed = {q.question for q in core_regression_questions()}
    questions = [q for q in load_regression_questions(CANDIDATES) if q.question not in fixed]
    models = models_dir()
    answers: dict[str, list] = {}
    seconds: dict[str, float] = {}
    for label, path, orders in (
        ("gptq", default_model_dir(models), 2),
        ("fp32", plain_model_dir(models), 1),
    ):
        with ModelRuntime.load(path, device="cpu", threads=2, system_prompt=DEFAULT_SYSTEM_PROMPT) as runtime:
            for order in range(orders):
                asked = questions if order == 0 else questions[::-1]
                started = time.perf_counter()
                results = run_regression(
                    runtime, adapter=None, questions=asked, system_prompt=DEFAULT_SYSTEM_PROMPT
                )
                seconds[f"{label}_{order}"] = round(time.perf_counter() - started, 1)
                answers[f"{label}_{order}"] = results if order == 0 else results[::-1]
    chosen = [q for i, q in enumerate(questions) if all(results[i].correct for results in answers.values())]
    flips = sum(a.correct != b.correct for a, b in zip(answers["gptq_0"], answers["gptq_1"], strict=True))
    result = {
        "machine": machine(),
        "candidates": len(questions),
        "chosen": len(chosen),
        "accuracy": {k: round(sum(bool(r.correct) for r in v) / len(v), 3) for k, v in answers.items()},
        "gptq_flips_between_orders": flips,
        "seconds": seconds,
        "answers": [
            {"question": q.question, **{k: [v[i].answer, v[i].correct] for k, v in answers.items()}}
            for i, q in enumerate(questions)
        ],
    }
    write("regression_set", result)
    if args.write:
        with TARGET.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["question", "expected_any"])
            writer.writerows([q.question, "|".join(q.expected_any)] for q in chosen)
        print(f"{len(chosen)} of {len(questions)} questions written to {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
