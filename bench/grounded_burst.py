"""Bursts of grounded questions, as members feel them (issue 29): the current serving path beside the
path before Dec 8, in the same run, each in a process of its own (so each one's peak memory is its own).

- **current**: prompts through dense weights in the dtype the CPU multiplies fastest (fp32 on an AVX2
  CPU without AVX-512 BF16), decode steps with int16 activations x int4 weights where the load-time
  probe says they win, long prompts read in chunks while answers stream, the system turn's keys and
  values computed once.
- **before**: bf16 dense prompt weights, torch's int4 kernel in every decode step, every prompt in one
  forward before the batch's next step, no system turn reused (the bench patches those choices back).

For 1, 4, 8, 16 ~1,000-token grounded questions submitted at once: each one's time to its first token
(from the burst's start, in submission order) and the time to the last answer, with 64 tokens forced
(end-of-sequence ignored, as llama-bench does) and with real end-of-sequence; 1 and 8 short questions
at once (aggregate tok/s, the multiple of one); single-stream first token and decode speed; peak RSS.
llama.cpp is compared in ``bench/serving.py`` where it is installed.

Run: ``python bench/grounded_burst.py [--models DIR] [--counts 1,4,8,16] [--before-counts 1,4,8,16]``;
writes bench/results/grounded_burst.json. Take it on a quiet machine (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import RAG_CASES, machine, models_dir, rag_messages, write

SHORT = [{"role": "user", "content": "Why is the sky blue? Explain in detail."}]
QUESTIONS = [
    "Why is the sky blue?",
    "How do cats purr?",
    "What is a good name for a parrot?",
    "How do I water a cactus?",
]


def forced(runtime: Any, on: bool, saved: dict[str, Any]) -> None:
    """Ignore end-of-sequence and the loop stop (every answer 64 tokens), or restore them."""
    import adapters.serving._streaming as streaming

    if not saved:
        saved.update(eos=set(runtime._engine._eos), loop_start=streaming.loop_start)
    runtime._engine._eos = set() if on else set(saved["eos"])
    streaming.loop_start = (lambda text, tail_only=False: None) if on else saved["loop_start"]


def burst(runtime: Any, asks: list[list[dict[str, str]]], new_tokens: int) -> dict[str, Any]:
    """Submit ``asks`` at once: each one's first token (seconds from the start, submission order), the
    last answer, tokens and aggregate tok/s."""
    started = time.perf_counter()
    first: list[float | None] = [None] * len(asks)

    def on_token(index: int) -> Any:
        def record(_piece: str) -> None:
            if first[index] is None:
                first[index] = time.perf_counter() - started

        return record

    futures = [runtime.submit(a, max_new_tokens=new_tokens, on_token=on_token(i)) for i, a in enumerate(asks)]
    results = [f.result() for f in futures]
    wall = time.perf_counter() - started
    tokens = sum(r.completion_tokens for r in results)
    return {
        "asks": len(asks),
        "first_token_s": [None if f is None else round(f, 2) for f in first],
        "last_answer_s": round(wall, 2),
        "tokens": tokens,
        "aggregate_tok_s": round(tokens / wall, 1),
    }


def one_path(name: str, counts: list[int], new_tokens: int) -> dict[str, Any]:
    """Every measurement of one serving path (run in a child process)."""
    import adapters.serving._engine as engine
    import adapters.serving._fastpath as fastpath
    from adapters.model import default_model_dir
    from adapters.serving import ModelRuntime

    if name == "before":
        fastpath.prompt_weight_dtype = lambda dtype: dtype  # bf16 dense prompt weights
        engine.PREFILL_CHUNK = 10**9  # every prompt in one forward
        ModelRuntime._system_turn = lambda self, system_prompt: []  # no system turn reused
    out: dict[str, Any] = {"path": name}
    with ModelRuntime.load(default_model_dir(models_dir()), device="cpu", threads=2, max_batch=16) as rt:
        decode = rt._engine.decode_step
        if name == "before" and decode is not None:
            decode.integer_rows = 0  # torch's int4 kernel in every decode step
        out["integer_rows"] = getattr(decode, "integer_rows", 0)
        out["fast_paths"] = rt.info()["fast_paths"]
        saved: dict[str, Any] = {}
        forced(rt, True, saved)
        single = {}
        for label, messages in (("short_question", SHORT), ("grounded_1000_tokens", rag_messages(0, 5))):
            rt.generate(messages, max_new_tokens=4)  # warm-up
            runs = [rt.generate(messages, max_new_tokens=new_tokens) for _ in range(3)]
            single[label] = {
                "prompt_tokens": runs[0].prompt_tokens,
                "ttft_s": round(statistics.median(r.first_token_seconds or 0.0 for r in runs), 3),
                "decode_tok_s": round(statistics.median(r.tokens_per_second for r in runs), 1),
            }
            print(name, label, single[label], flush=True)
        out["single_stream"] = single
        short = [
            burst(rt, [[{"role": "user", "content": QUESTIONS[i % 4]}] for i in range(n)], new_tokens)
            for n in (1, 8)
        ]
        short[1]["vs_one"] = round(short[1]["aggregate_tok_s"] / short[0]["aggregate_tok_s"], 2)
        out["short_burst"] = short
        print(name, "short", short, flush=True)
        for mode in ("forced_64", "end_of_sequence"):
            forced(rt, mode == "forced_64", saved)
            rows = []
            for count in counts:
                rows.append(
                    burst(rt, [rag_messages(i % len(RAG_CASES), 5) for i in range(count)], new_tokens)
                )
                print(name, mode, rows[-1], flush=True)
            out[f"grounded_{mode}"] = rows
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None, help="models dir (default: settings)")
    parser.add_argument("--counts", default="1,4,8,16")
    parser.add_argument("--before-counts", default="1,4,8,16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)  # a child process's path
    args = parser.parse_args()
    if args.path:
        counts = [int(c) for c in (args.before_counts if args.path == "before" else args.counts).split(",")]
        print("RESULT " + json.dumps(one_path(args.path, counts, args.new_tokens)), flush=True)
        return
    result: dict[str, Any] = {"machine": machine(), "threads": 2, "new_tokens": args.new_tokens}
    for path in ("current", "before"):
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--path", path],
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(line for line in child.stdout.splitlines() if line.startswith("RESULT "))
        result[path] = json.loads(line[len("RESULT ") :])
    for mode in ("forced_64", "end_of_sequence"):
        now, then = result["current"][f"grounded_{mode}"], result["before"][f"grounded_{mode}"]
        result[f"last_answer_vs_before_{mode}"] = {
            str(a["asks"]): round(a["last_answer_s"] / b["last_answer_s"], 2)
            for a in now
            for b in then
            if a["asks"] == b["asks"]
        }
    result["machine"]["load_average_after"] = os.getloadavg()
    write("grounded_burst", result)


if __name__ == "__main__":
    main()
