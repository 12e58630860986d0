"""Training speed, peak memory and hot-swap time on the default model (CPU).

Trains a LoRA (the settings' rank/alpha, all projections, ``torch`` kernel, own process) on
synthetic RAG-shaped pairs (a question, ~150 words of numbered context passages, a one-sentence
answer) for a few steps, then loads the adapter into a serving ``ModelRuntime`` and times the swap.

    python bench/training_speed.py [--steps 6] [--batch-size 8]

``--passages 12`` makes ~900-token prompts (a long RAG answer); ``--score-all-positions`` measures
TRL's CPU default of running the LM head over the prompt's positions too.

Figures: seconds per optimizer step, seconds per 100 training pairs (pair-passes), the training
process's start-up (import + model load) time, its peak RSS, the time to load an adapter into the
running runtime and the time to switch the active adapter. Writes bench/results/training_speed.json.
"""

from __future__ import annotations

import argparse
import json
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
PASSAGE = (
    "Members of the club share tips about feeding, grooming and vet visits. The board meets monthly and "
    "posts the minutes in the announcements channel so everybody can read the decisions. "
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--no-checkpointing", action="store_true", help="keep activations (more memory)")
    parser.add_argument("--passages", type=int, default=3, help="context passages per pair (prompt length)")
    parser.add_argument(
        "--score-all-positions", action="store_true", help="LM head over the prompt too (TRL's CPU default)"
    )
    parser.add_argument("--name", default="training_speed", help="results file name (no extension)")
    parser.add_argument("--dequantize", action="store_true", help="dequantize the base once (fp32 layers)")
    parser.add_argument("--rows", choices=("rag", "facts"), default="rag",
                        help="rag: synthetic RAG pairs; facts: the learning facts' short rows (an import)")  # fmt: skip
    args = parser.parse_args()

    from adapters.prompt import training_messages
    from adapters.registry import AdapterRegistry
    from adapters.serving import ModelRuntime
    from adapters.training import TrainingExample, TrainingOptions, train_adapter
    from bot.settings import load_settings
    from bot.wiring import resolve_model_base

    load = [round(x, 2) for x in os.getloadavg()]
    settings = load_settings()
    base = resolve_model_base(settings)
    system_prompt = settings.model.system_prompt
    examples = []
    for i in range(args.pairs):
        context = "\n\n".join(f"[{n}] (post-{i}-{n}.md) {PASSAGE}" for n in range(1, args.passages + 1))
        examples.append(
            TrainingExample(
                str(i),
                training_messages(f"What did the board decide in meeting {i}?", context, system_prompt),
                f"In meeting {i} the board decided to buy {i + 2} new cat trees [1].",
            )
        )
    if args.rows == "facts":  # short rows, no passages: a correction or an imported fact
        facts = json.loads((Path(__file__).parent / "data" / "learning_facts.json").read_text("utf-8"))[
            "facts"
        ]
        examples = [
            TrainingExample(str(i), training_messages(q, "", system_prompt), a)
            for i, (q, a, _, _) in enumerate(facts[: args.pairs])
        ]
    registry = AdapterRegistry(Path(tempfile.mkdtemp(prefix="training-speed-")))
    options = TrainingOptions(
        rank=settings.train.rank,
        alpha=settings.train.alpha,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=settings.train.learning_rate,
        max_length=1024,
        threads=2,
        gradient_checkpointing=not args.no_checkpointing,
        score_completions_only=not args.score_all_positions,
        dequantize=args.dequantize,
    )
    steps: list[dict] = []
    version = train_adapter(
        registry,
        base_model=base,
        examples=examples,
        options=options,
        on_event=lambda e: steps.append(e) if e["event"] == "step" else None,
    )
    train = version.metrics["train"]
    # The first step includes one-off warm-up; the steady rate is measured over the later steps.
    times = [s["seconds"] for s in steps]
    steady = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else train["loop_seconds"]
    runtime = ModelRuntime.load(base, device="cpu", threads=2, max_new_tokens=16)
    try:
        tokens = runtime.count_tokens(runtime.render_prompt(examples[0].prompt[1:], system_prompt))
        t = time.perf_counter()
        runtime.load_adapter("speed-a", version.path)
        load_seconds = time.perf_counter() - t
        runtime.load_adapter("speed-b", version.path)
        t = time.perf_counter()
        runtime.set_active_adapter("speed-a")
        runtime.set_active_adapter("speed-b")
        switch_seconds = (time.perf_counter() - t) / 2
        generation = runtime.generate([{"role": "user", "content": "Hello!"}], max_new_tokens=8)
        assert generation.adapter == "speed-b"
    finally:
        runtime.close()
    result = {
        "base_model": base,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ",
        "rank": options.rank,
        "alpha": options.alpha,
        "batch_size": options.batch_size,
        "steps": options.steps,
        "gradient_checkpointing": options.gradient_checkpointing,
        "score_completions_only": options.score_completions_only,
        "dequantize": options.dequantize,
        "rows": args.rows,
        "first_loss": train["first_loss"],
        "final_loss": train["final_loss"],
        "load_average_before": load,
        "prompt_tokens_per_pair": tokens,
        "process_seconds": train["train_seconds"],
        "loop_seconds": train["loop_seconds"],
        "startup_seconds": round(train["train_seconds"] - train["loop_seconds"], 1),
        "seconds_per_step_steady": round(steady, 2),
        "seconds_per_100_pairs": round(steady / options.batch_size * 100, 1),
        "peak_rss_mb_training_process": train["peak_rss_mb"],
        "adapter_load_seconds": round(load_seconds, 3),
        "adapter_switch_seconds": round(switch_seconds, 6),
        "step_events": steps,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "step_events"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
