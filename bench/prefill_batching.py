"""Prompts admitted together, prefilled together or one by one: the same runtime in the same run.

For each way (``together``: ``adapters.serving._engine.prefill_groups``; ``alone``: one forward per prompt,
as before), twice in alternation: one short ask's decode speed, 8 short asks submitted at once
(aggregate tok/s, the ratio to one, and when the last of them got its first token, from submission),
16 short asks, and 8 ~1,000-token RAG prompts (last answer). Default model, 2 threads, greedy, 64 new
tokens decoded past end-of-sequence (``bench/serving.py``'s ``ignore_eos``).

Run: ``python bench/prefill_batching.py``. Writes bench/results/prefill_batching.json.
"""

from __future__ import annotations

import os
import time
from typing import Any

from _common import machine, models_dir, write
from serving import concurrent, ignore_eos, rag_ask, short_ask

import adapters.serving._engine as batching


def burst(runtime: Any, count: int, new_tokens: int) -> dict[str, float]:
    """``count`` short asks at once: aggregate tok/s and the last first token since submission."""
    firsts: dict[int, float] = {}
    started = time.perf_counter()
    futures = [
        runtime.submit(
            short_ask(i),
            max_new_tokens=new_tokens,
            on_token=lambda _piece, i=i: firsts.setdefault(i, time.perf_counter()),
        )
        for i in range(count)
    ]
    tokens = sum(f.result().completion_tokens for f in futures)
    wall = time.perf_counter() - started
    return {
        "aggregate_tok_s": round(tokens / wall, 1),
        "last_first_token_s": round(max(firsts.values()) - started, 3),
    }


def main() -> None:
    from adapters.model import default_model_dir
    from adapters.serving import ModelRuntime

    together = batching.prefill_groups
    ways = {"together": together, "alone": lambda requests: [[r] for r in requests]}
    result: dict[str, Any] = {"machine": machine(), "new_tokens": 64, "together": [], "alone": []}
    with ModelRuntime.load(default_model_dir(models_dir()), device="cpu", threads=2, max_batch=16) as rt:
        ignore_eos(rt)
        concurrent(rt, 8, 8)  # warm-up
        for _ in range(2):
            for name, groups in ways.items():
                batching.prefill_groups = groups  # type: ignore[assignment]
                one = concurrent(rt, 1, 64)["aggregate_tok_s"]
                eight = burst(rt, 8, 64)
                row = {
                    "one_tok_s": one,
                    "eight_tok_s": eight["aggregate_tok_s"],
                    "eight_vs_one": round(eight["aggregate_tok_s"] / one, 2),
                    "eight_last_first_token_s": eight["last_first_token_s"],
                    "sixteen_tok_s": concurrent(rt, 16, 64)["aggregate_tok_s"],
                    "rag_eight_last_answer_s": concurrent(rt, 8, 64, ask=rag_ask)["last_answer_s"],
                    "load_average": round(os.getloadavg()[0], 2),
                }
                result[name].append(row)
                print(name, row, flush=True)
        batching.prefill_groups = together
    write("prefill_batching", result)


if __name__ == "__main__":
    main()
