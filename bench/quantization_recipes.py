"""How the default model's quantization recipe was chosen: quantize the prepared plain model with
each candidate recipe, then measure what ``quantization_quality.py`` measures for the served model:
regression accuracy (bf16, the bot's prompt) and divergence from the fp32 model (agreement, KL).

Run: ``python bench/quantization_recipes.py [NAME ...]`` (the default model must be prepared; each
recipe costs 3-8 minutes on 2 cores). Writes bench/results/quantization_recipes.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, machine, models_dir, write

SEQUENTIAL = {"true_sequential": True, "offload_to_disk": True}  # gptqmodel's own defaults
# name: (QuantizeConfig overrides, quantize batch size, topic answers in the calibration: 0 = 44 texts)
RECIPES = {
    "g32-asym-base": ({**SEQUENTIAL}, 4, 0),
    "g32-sym-base": ({**SEQUENTIAL, "sym": True}, 4, 0),
    "g32-asym-damp0.01-base": ({**SEQUENTIAL, "damp_percent": 0.01}, 4, 0),
    "g32-asym-gptaq-base": ({**SEQUENTIAL, "gptaq": {"alpha": 0.25}}, 1, 0),  # GPTAQ needs batch size 1
    "g32-asym-topics192": ({**SEQUENTIAL}, 4, 192),
    "g32-asym-topics192-fast": ({}, 4, 192),
    "g32-asym-base-fast (chosen)": ({}, 4, 0),
}


def calibration(plain: Path, topics: int, cache: dict[int, list[str]]) -> list[str]:
    from adapters.model import Recipe, build_calibration

    if topics not in cache:
        cache[topics] = build_calibration(plain, Recipe(n_topics=topics))
    return cache[topics]


def measure(path: Path, reference, tokenizer) -> dict:
    from adapters.gate import (
        accuracy,
        core_regression_questions,
        divergence_from_reference,
        regression_conversations,
        run_regression,
    )
    from adapters.model import load_base_model
    from adapters.serving import ModelRuntime
    from bot.settings import DEFAULT_SYSTEM_PROMPT

    with ModelRuntime.load(path, device="cpu", threads=2) as runtime:
        results = run_regression(
            runtime, adapter=None, questions=core_regression_questions(), system_prompt=DEFAULT_SYSTEM_PROMPT
        )
    model, _ = load_base_model(path, device="cpu")
    d = divergence_from_reference(
        model, reference, tokenizer, regression_conversations(DEFAULT_SYSTEM_PROMPT)
    )
    return {
        "regression_correct": sum(bool(r.correct) for r in results),
        "regression_accuracy": round(accuracy(results), 3),
        "agreement": round(d.agreement, 4),
        "kl": round(d.kl, 4),
    }


def main(names: list[str]) -> None:
    from adapters import model as default_model
    from adapters.model import load_base_model

    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}: pick from {list(RECIPES)}")
    plain = default_model.plain_model_dir(models_dir())
    reference, tokenizer = load_base_model(plain, device="cpu", dtype="float32")
    base_config = {
        "bits": default_model.BITS,
        "group_size": default_model.GROUP_SIZE,
        "desc_act": default_model.DESC_ACT,
        "sym": default_model.SYM,
        "mse": default_model.MSE,
    }
    cache: dict[int, list[str]] = {}
    previous = RESULTS / "quantization_recipes.json"
    earlier = json.loads(previous.read_text(encoding="utf-8"))["recipes"] if previous.is_file() else []
    rows: list[dict] = []
    for name in names or list(RECIPES):
        overrides, batch_size, topics = RECIPES[name]
        texts = calibration(plain, topics, cache)
        config = {**base_config, **overrides}
        load = [round(x, 2) for x in os.getloadavg()]
        with tempfile.TemporaryDirectory(prefix="loopbot-recipe-") as scratch:
            started = time.perf_counter()
            default_model.quantize(plain, Path(scratch), texts, batch_size=batch_size, **config)
            seconds = round(time.perf_counter() - started)
            row = {"recipe": name, "config": config, "calibration_texts": len(texts), "quantize_s": seconds}
            row.update(measure(Path(scratch), reference, tokenizer))
        row["load_average_before"] = load
        print(json.dumps(row), flush=True)
        rows.append(row)
    # Recipes measured in earlier runs and not re-run now are kept.
    kept = [r for r in earlier if r["recipe"] not in {row["recipe"] for row in rows}]
    write("quantization_recipes", {"machine": machine(), "recipes": kept + rows})


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--models" in args:  # read by models_dir()
        del args[args.index("--models") : args.index("--models") + 2]
    main(args)
