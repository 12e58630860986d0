"""Bot latency: the real bot in simcord, answering with the default model on a small knowledge base.

Measures, for questions asked by mention:

- time from the member's message to the bot's first visible reaction (the typing indicator) and to
  the reply's placeholder and to the first streamed text (its first edit), p50 over sequential questions;
- the bot's own overhead: total time to the final answer minus the answer service's time
  (retrieval + generation), p50;
- 8 members asking at once in one channel: all answered?, total time, and the longest event-loop
  stall seen by a loop-lag monitor task (goal < 100 ms);
- the process's peak resident memory.

Run: ``python bench/bot_latency.py [--model PATH] [--questions 8] [--max-new-tokens 48]``. Writes
``bench/results/bot_latency.json``. Without ``--model`` it uses the prepared default model
(``loopbot model prepare``) of ``LOOPBOT_DATA_DIR``. simcord stands in for Discord, so network
latency is not included: these are the bot's and the model's times on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "bot_latency.json"

POSTS = [
    "Mochi the cat eats twice a day: a small breakfast at seven and dinner at six.",
    "Brush a long-haired cat every day and a short-haired cat once a week.",
    "Kittens need three or four small meals a day until they are six months old.",
    "A cat that sneezes now and then is usually fine; see a vet if it lasts more than a week.",
    "Fresh water should always be available; many cats prefer a fountain to a bowl.",
    "Clean the litter box daily and replace all the litter every two weeks.",
]
QUESTIONS = [
    "How often does Mochi eat?",
    "How often should I brush a long-haired cat?",
    "How many meals do kittens need?",
    "My cat sneezes, should I worry?",
    "Do cats like water fountains?",
    "How often should I clean the litter box?",
    "When does Mochi have dinner?",
    "How often should a short-haired cat be brushed?",
]


class LoopLag:
    """Samples how late a 10 ms sleep wakes up: the longest stall of the event loop."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.stalls: list[float] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def max_stall(self) -> float:
        return max(self.stalls, default=0.0)

    @property
    def samples(self) -> int:
        return len(self.stalls)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.stalls)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.stalls.append(max(0.0, time.perf_counter() - start - self.interval))

    def start(self) -> None:
        self.stalls = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 4) if values else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from simcord import Env

    from adapters.serving import ModelRuntime
    from bot import wiring
    from bot.discord_app import create_bot
    from bot.settings import DiscordSettings, Settings
    from ingest import text_chunks

    data_dir = Path(tempfile.mkdtemp(prefix="loopbot-bench-"))
    settings = Settings(data_dir=data_dir, discord=DiscordSettings(rate_limit_per_minute=0))
    model = args.model or wiring.resolve_model_base(Settings())
    load_start = time.perf_counter()
    runtime = ModelRuntime.load(model, device="cpu", threads=2, max_new_tokens=args.max_new_tokens)
    kb = wiring.build_knowledge_base(settings)
    load_seconds = time.perf_counter() - load_start
    feedback_log = wiring.build_feedback_log(settings)
    service = wiring.build_answer_service(settings, kb=kb, runtime=runtime)

    # Time the answer service from outside (retrieval + generation), to separate the bot's overhead.
    service_times: list[float] = []
    original_aanswer = service.aanswer

    async def timed_aanswer(*a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return await original_aanswer(*a, **kw)
        finally:
            service_times.append(time.perf_counter() - start)

    service.aanswer = timed_aanswer  # type: ignore[method-assign]

    bot = create_bot(
        settings, runtime=runtime, answer_service=service, knowledge_base=kb, feedback_log=feedback_log
    )
    env = Env(bot, settle_timeout=1800)
    await env.start()
    stamps: list[tuple[float, str, str]] = []
    original_request = bot.http.request

    async def timed_request(route: Any, **kw: Any) -> Any:
        stamps.append((time.perf_counter(), route.method, route.path))
        return await original_request(route, **kw)

    bot.http.request = timed_request  # type: ignore[method-assign]
    guild = env.create_guild(name="bench")
    channel = guild.create_text_channel("general")
    members = [guild.add_member(env.create_user(f"member{n}")) for n in range(8)]
    await env.settle()
    kb.add(
        [
            c
            for i, post in enumerate(POSTS)
            for c in text_chunks(post, source=f"post-{i}.md", scope="community", guild_id=str(guild.id))
        ]
    )
    mention = bot.user.mention
    lag = LoopLag()

    # Warm-up: the first generation pays one-time costs (kernel setup, caches).
    env.backend.create_message(channel.id, members[0].id, f"{mention} hello")
    await env.settle()

    # 1. Sequential questions: first reaction, first text, total, overhead.
    typing_s, placeholder_s, first_text_s, total_s, overhead_s, service_s = [], [], [], [], [], []
    lag.start()
    for n in range(args.questions):
        stamps.clear()
        service_times.clear()
        start = time.perf_counter()
        env.backend.create_message(
            channel.id, members[n % 8].id, f"{mention} {QUESTIONS[n % len(QUESTIONS)]}"
        )
        await env.settle()
        end = time.perf_counter()
        typing = next(t for t, method, path in stamps if method == "POST" and path.endswith("/typing"))
        posted = next(t for t, method, path in stamps if method == "POST" and path.endswith("/messages"))
        # The reply is posted at once as a placeholder ("…"); its first edit shows the first text.
        first = next(t for t, method, path in stamps if method == "PATCH" and "/messages/" in path)
        typing_s.append(typing - start)
        placeholder_s.append(posted - start)
        first_text_s.append(first - start)
        total_s.append(end - start)
        overhead_s.append((end - start) - sum(service_times))
        service_s.append(sum(service_times))
    await lag.stop()
    sequential_stall, sequential_p99 = lag.max_stall, lag.percentile(0.99)

    # 2. Eight members at once in one channel.
    before = {m.id for m in channel.history()}
    lag.start()
    start = time.perf_counter()
    questions = [
        env.backend.create_message(channel.id, member.id, f"{mention} {QUESTIONS[i]}")
        for i, member in enumerate(members)
    ]
    await env.settle()
    burst_total = time.perf_counter() - start
    await lag.stop()
    replies = [m for m in channel.history() if m.author.id == bot.user.id and m.id not in before]
    answered = {m.reference.message_id for m in replies if m.reference}
    in_order = [m.reference.message_id for m in replies if m.reference] == [q.id for q in questions]

    await env.shutdown()
    runtime.close()
    kb.close()
    feedback_log.close()
    return {
        "model": str(model),
        "max_new_tokens": args.max_new_tokens,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_seconds": round(load_seconds, 2),
        "sequential": {
            "questions": args.questions,
            "first_reaction_typing_p50_s": p50(typing_s),
            "reply_placeholder_p50_s": p50(placeholder_s),
            "first_streamed_text_p50_s": p50(first_text_s),
            "answer_total_p50_s": p50(total_s),
            "answer_service_p50_s": p50(service_s),
            "bot_overhead_excluding_answer_service_p50_s": p50(overhead_s),
            "max_event_loop_stall_ms": round(sequential_stall * 1000, 1),
            "p99_event_loop_stall_ms": round(sequential_p99 * 1000, 1),
        },
        "eight_at_once": {
            "members": len(members),
            "all_answered": answered >= {q.id for q in questions},
            "answered_in_order": in_order,
            "total_s": round(burst_total, 2),
            "max_event_loop_stall_ms": round(lag.max_stall * 1000, 1),
            "p99_event_loop_stall_ms": round(lag.percentile(0.99) * 1000, 1),
            "loop_lag_samples": lag.samples,
        },
        "note": "simcord stands in for Discord (no network latency); the loop-lag figure includes simcord's own work.",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model directory (default: the prepared default model)")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    # The bot's whole process (model, embedder, Chroma, simcord) at its largest; ru_maxrss is in KiB.
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
