"""Benchmark how long a CLI promotion takes to reach a running bot.

    python bench/promotion_reach.py [--rounds 6] [--poll 5]

The bot's registry watch (``AdminCog.watch_registries``: ``GuildAdapters.refresh`` every
``LOOPBOT_DISCORD_REGISTRY_POLL_SECONDS``) runs on a real event loop over the prepared default
model; another process runs ``loopbot adapters promote`` (or ``rollback``) at a random moment, and
we time from the command's exit to the guild being answered with the new adapter. Writes
``bench/results/promotion_reach.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402

GUILD = "1001"


def _random_adapter(plain_dir: Path, dest: Path, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(plain_dir), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(str(dest))


async def _run(args: argparse.Namespace) -> dict:
    from adapters.model import plain_model_dir
    from adapters.registry import guild_registry
    from bot.settings import load_settings
    from bot.usecases.serving import GuildAdapters
    from bot.wiring import build_registry, build_runtime, resolve_model_base

    settings = load_settings()
    data = Path(tempfile.mkdtemp(prefix="loopbot-reach-"))
    env = {**os.environ, "LOOPBOT_DATA_DIR": str(data), "LOOPBOT_MODEL_BASE": resolve_model_base(settings)}
    registry = guild_registry(data / "adapters", GUILD)
    plain = plain_model_dir(settings.models_dir)
    for seed in (1, 2):
        with registry.stage() as stage:
            _random_adapter(plain, stage.path, seed)
            registry.publish(stage, {"base_model": resolve_model_base(settings)})
    runtime = build_runtime(settings)
    adapters = GuildAdapters(
        runtime, lambda guild: build_registry(settings.model_copy(update={"data_dir": data}), guild)
    )

    async def watch() -> None:
        while True:
            await asyncio.to_thread(adapters.refresh, [GUILD])
            await asyncio.sleep(args.poll)

    watcher = asyncio.create_task(watch())
    reach, refresh = [], []
    try:
        for n in range(args.rounds):
            await asyncio.sleep(random.uniform(0, args.poll))
            target = "v0001" if n % 2 == 0 else "v0002"
            cmd = [sys.executable, "-m", "bot", "adapters", "promote", target, "--guild", GUILD]
            await asyncio.to_thread(subprocess.run, cmd, env=env, check=True, capture_output=True)
            done = time.perf_counter()
            want = registry.get(target).served_name
            while adapters.choice_for(GUILD).top != want:
                await asyncio.sleep(0.01)
            reach.append(time.perf_counter() - done)
        t = time.perf_counter()
        await asyncio.to_thread(adapters.refresh, [GUILD])
        refresh.append(time.perf_counter() - t)
    finally:
        watcher.cancel()
        runtime.close()
    return {
        "poll_seconds": args.poll,
        "rounds": args.rounds,
        "reach_seconds": [round(s, 2) for s in reach],
        "reach_p50_seconds": round(statistics.median(reach), 2),
        "reach_max_seconds": round(max(reach), 2),
        "refresh_without_change_seconds": round(refresh[0], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--poll", type=float, default=5.0)
    args = parser.parse_args()
    load = os.getloadavg()
    result = asyncio.run(_run(args))
    write("promotion_reach", {**result, "load_average_before": load, "machine": machine()})


if __name__ == "__main__":
    main()
