"""CLI area ``model``: ``loopbot model prepare``, ``loopbot model info`` and ``loopbot eval``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bot.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``model prepare``, ``model info`` and ``eval``."""
    model = subparsers.add_parser(
        "model", help="the base model: prepare the offline default, show what is loaded"
    )
    actions = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    prepare = actions.add_parser(
        "prepare", help="build the offline default model (GGUF -> plain -> GPTQ 4-bit)"
    )
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    prepare.set_defaults(handler=prepare_handler)
    info = actions.add_parser("info", help="load the configured model and print what is loaded (JSON)")
    info.set_defaults(handler=info_handler)

    evaluate = subparsers.add_parser("eval", help="answer the regression questions, write a CSV report")
    evaluate.add_argument(
        "--out", type=Path, required=True, help="CSV file: question,expected,answer,correct"
    )
    evaluate.add_argument(
        "--questions", type=Path, default=None, help="question,expected_any CSV (default: packaged)"
    )
    evaluate.add_argument(
        "--adapter", default=None, help="adapter name to evaluate (default: the active one); 'base' for none"
    )
    evaluate.set_defaults(handler=eval_handler)


def prepare_handler(args: argparse.Namespace, settings: Settings) -> int:
    """Prepare the default model under the data dir and say where it is."""
    from adapters.model import default_model_dir as final_dir
    from adapters.model import is_prepared, prepare_default_model

    already = is_prepared(final_dir(settings.models_dir))
    started = time.perf_counter()
    path = prepare_default_model(settings.models_dir, progress=not args.no_progress)
    if already:
        print(f"default model already prepared: {path}")
    else:
        print(f"default model prepared in {time.perf_counter() - started:.0f} s: {path}")
    if settings.model.native_decode:
        _prepare_native_kernels()
    return 0


def _prepare_native_kernels() -> None:
    """Build the native decode kernels now (once per machine) rather than at the bot's first answer."""
    from adapters.serving import load_native_kernels, native_kernels_dir

    started = time.perf_counter()
    built = native_kernels_dir()
    fresh = not built.exists()
    if fresh:
        print("building the native decode kernels (once, about 20 s)")
    problem = load_native_kernels()
    if problem is None:
        took = f" in {time.perf_counter() - started:.0f} s" if fresh else ""
        print(f"native decode kernels ready{took}: {built}")
    else:
        print(f"native decode kernels unavailable ({problem}): answers use the Python decode step")


def info_handler(args: argparse.Namespace, settings: Settings) -> int:
    """Print the runtime's info() as JSON."""
    from bot.wiring import build_runtime

    runtime = build_runtime(settings)
    try:
        json.dump(runtime.info(), sys.stdout, indent=2)
        print()
    finally:
        runtime.close()
    return 0


def eval_handler(args: argparse.Namespace, settings: Settings) -> int:
    """Run the regression set on the configured model and write the CSV report."""
    from adapters.gate import accuracy, load_regression_questions, run_regression, write_regression_csv
    from adapters.serving import ACTIVE, BASE
    from bot.wiring import build_runtime

    questions = load_regression_questions(args.questions)
    runtime = build_runtime(settings)
    try:
        adapter = ACTIVE if args.adapter is None else (BASE if args.adapter == "base" else args.adapter)
        results = run_regression(
            runtime, adapter=adapter, questions=questions, system_prompt=settings.model.system_prompt
        )
    finally:
        runtime.close()
    write_regression_csv(results, args.out)
    gradable = [r for r in results if r.correct is not None]
    print(
        f"accuracy {accuracy(results):.2f} ({sum(bool(r.correct) for r in gradable)}/{len(gradable)} gradable); "
        f"report: {args.out}"
    )
    return 0
