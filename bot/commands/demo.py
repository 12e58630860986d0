"""CLI area ``demo``: ``loopbot demo`` runs the whole learning loop on the offline default model.

ingest a sample knowledge base → answer questions with sources → members 👍 good answers and correct
wrong ones (through the feedback log, as the bot does) → retrain → gate → promote + hot swap → answer
again, printing before and after. The sample data ships in ``adapters/data/demo``. Everything is
written under ``LOOPBOT_DATA_DIR``: use a fresh directory (``LOOPBOT_DATA_DIR=/tmp/demo loopbot demo``).
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from bot.settings import Settings

GUILD = "1000000000000000001"  # Discord-style ids: the knowledge base checks them
CHANNEL = "1000000000000000002"
ASKER = "1000000000000000003"
VOTER = "1000000000000000004"
# The demo trains with the default recipe (LOOPBOT_TRAIN_*); only the schedule's guards are lifted.
DEMO_TRAIN: dict[str, Any] = {"min_pairs": 4, "min_interval_hours": 0.0}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    demo = subparsers.add_parser(
        "demo", help="run the whole loop on sample data: answer, feedback, retrain, swap"
    )
    demo.add_argument(
        "--steps", type=int, default=0, help="training steps (default: from LOOPBOT_TRAIN_EPOCHS)"
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument(
        "--json", type=Path, default=None, help="also write the before/after results to this file"
    )
    demo.set_defaults(handler=demo_handler)


def demo_data_dir() -> Path:
    """The packaged sample data (``kb/`` and ``feedback.json``)."""
    return Path(str(resources.files("adapters.data.demo")))


def demo_settings(settings: Settings, steps: int = 0) -> Settings:
    """The operator's settings, training as soon as the demo's few pairs are in."""
    train = settings.train.model_copy(update={**DEMO_TRAIN, **({"steps": steps} if steps else {})})
    model = settings.model.model_copy(update={"max_new_tokens": min(settings.model.max_new_tokens, 48)})
    return settings.model_copy(update={"train": train, "model": model})


def _short(text: str, width: int = 100) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" …")


def run_demo(
    settings: Settings,
    *,
    steps: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the loop end to end; returns the before/after answers, the cycle report and timings."""
    from adapters.model import default_model_dir, is_prepared, prepare_default_model
    from bot.usecases.asking import Asker, answer_and_record
    from bot.usecases.feedback import correct
    from bot.usecases.training import run_training_cycle
    from bot.wiring import (
        build_answer_service,
        build_feedback_log,
        build_knowledge_base,
        build_runtime,
        build_training_parts,
    )
    from ingest import ingest_paths

    started = time.perf_counter()
    settings = demo_settings(settings, steps)
    data = demo_data_dir()
    script = json.loads((data / "feedback.json").read_text(encoding="utf-8"))
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    t = time.perf_counter()
    if not settings.model.base:
        if not is_prepared(default_model_dir(settings.models_dir)):
            echo("1. preparing the offline default model (once, about 2 minutes)")
        path = prepare_default_model(settings.models_dir, progress=progress)
        echo(f"1. model: {path}")
    else:
        echo(f"1. model: {settings.model.base}")
    t = lap("prepare_model", t)
    echo(
        f"2. ingesting the sample knowledge base ({', '.join(sorted(p.name for p in (data / 'kb').iterdir()))})"
    )
    kb = build_knowledge_base(settings)
    runtime = None
    log = build_feedback_log(settings)
    try:
        kb.claim()
        report = ingest_paths(kb, [data / "kb"], scope="community", guild_id=GUILD)
        echo(f"   {report.summary()}")
        t = lap("ingest", t)
        runtime = build_runtime(settings, guild_id=GUILD)
        service = build_answer_service(settings, kb=kb, runtime=runtime)
        echo(f"3. answering as the bot does (adapter: {runtime.active_adapter or 'none, bare base model'})")
        before: dict[str, str] = {}

        asker = Asker(user_id=ASKER, guild_id=GUILD, channel_id=CHANNEL)

        def ask(question: str) -> tuple[int, Any]:
            answer_id, answer = answer_and_record(service, log, question, asker)
            sources = ", ".join(f"[{n}] {s.source}" for n, s in enumerate(answer.sources, 1)) or "no sources"
            echo(f"   Q: {question}\n   A: {_short(answer.answer)}   ({sources})")
            return answer_id, answer

        for question in script["upvote"]:
            answer_id, answer = ask(question)
            before[question] = answer.answer
            log.set_vote(answer_id, VOTER, 1, True)
            echo("      👍 from a member")
        for fact in script["correct"]:
            for question in fact["questions"]:
                answer_id, answer = ask(question)
                before[question] = answer.answer
                # As the bot does: recorded, accepted (the asker is trusted) and published as a post.
                record = log.get_answer(answer_id)
                assert record is not None  # just recorded
                correct(
                    log,
                    kb,
                    record,
                    author_id=ASKER,
                    text=fact["answer"],
                    message_id=None,
                    trusted=True,
                    votes_needed=settings.discord.correction_votes,
                    private=False,
                )
                echo(f"      ✏️ corrected by the asker: {fact['answer']}")
        stats = log.stats()
        echo(
            f"   feedback log: {stats.answers} answers, {stats.upvotes} 👍, {stats.corrections} corrections, "
            f"pairs {stats.pairs}"
        )
        t = lap("answer_and_feedback", t)
        recipe = (
            f"{settings.train.steps} steps" if settings.train.steps else f"{settings.train.epochs:g} epochs"
        )
        echo(f"4. retraining ({recipe}, own process; the bar shows the time left), gating and promoting")
        # Unlike the bot, which answers members meanwhile and swaps the promoted adapter in place, the
        # demo has nothing to answer while it trains: its model makes room for the training process
        # (peak memory, bench/first_run.py) and the cycle loads one of its own for the gate.
        runtime.close()
        runtime = None
        del service
        parts = build_training_parts(settings, log, guild_id=GUILD, embeddings=kb.embeddings)
        cycle = run_training_cycle(settings, parts, show_progress=progress)
        echo(f"   {cycle.summary()}")
        if cycle.gate is not None:
            echo(f"   {cycle.gate.summary()}; report {cycle.gate.report_path}")
        t = lap("train_gate_swap", t)
        runtime = build_runtime(settings, guild_id=GUILD)  # serves the guild's active adapter
        service = build_answer_service(settings, kb=kb, runtime=runtime)
        echo(f"5. answering again (adapter: {runtime.active_adapter or 'none'})")
        rows = []
        for question in script["ask_after"]:
            after = service.answer(question, user_id=ASKER, guild_id=GUILD)
            expected = next((f["answer"] for f in script["correct"] if question in f["questions"]), None)
            rows.append(
                {
                    "question": question,
                    "before": before.get(question, ""),
                    "after": after.answer,
                    "expected": expected,
                    "adapter": after.adapter,
                }
            )
            echo(
                f"   Q: {question}\n      before: {_short(before.get(question, ''))}\n      after:  "
                f"{_short(after.answer)}"
            )
        lap("answer_again", t)
    finally:
        log.close()
        if runtime is not None:
            runtime.close()
        kb.close()
    timings["total"] = round(time.perf_counter() - started, 1)
    echo(f"done in {timings['total']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
    return {
        "rows": rows,
        "timings": timings,
        "promoted": cycle.promoted,
        "version": cycle.version,
        "gate": cycle.gate.metrics() if cycle.gate else None,
        "train": cycle.train_metrics,
    }


def demo_handler(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo and optionally save its results as JSON."""
    result = run_demo(settings, steps=args.steps, progress=not args.no_progress)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0
