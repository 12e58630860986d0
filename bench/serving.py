"""Serving speed of the in-process runtime, side by side in one run (issue 13's figures).

- Single stream, short question and a ~1,000-token RAG prompt: time to first token and decode tok/s
  of the runtime (GPTQ 4-bit, continuous batching engine, CPU fast paths), of the same runtime
  without the fast paths (``fast_paths=False``: the int4 kernel for every matmul, torch's flash
  attention for decode steps, every step on all threads: what it ran before), of the plain fp32 model
  through the runtime, and of llama.cpp on the wheel's own GGUF when ``llama_cpp`` is installed
  (optional: it builds from source in ~12 min, so it is not a dependency).
- Concurrency: 1, 2, 4, 8, 16 asks at once (short questions, then ~1,000-token RAG prompts),
  aggregate tok/s and time to the last answer, with and without the fast paths; 8 at once split across
  two adapters and the base model; the asyncio event loop's longest stall with 8 at once.
- Peak RSS of this process after the fast runtime (two adapters loaded), and at the end.

Decoding is greedy and ignores the end-of-sequence token, as llama-bench does, so every run decodes
the same number of tokens. Run: ``python bench/serving.py [--models DIR] [--new-tokens N]``;
writes bench/results/serving.json. Take it on a quiet machine (the load average is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RAG_CASES, machine, models_dir, rag_messages, write

SHORT = [{"role": "user", "content": "Why is the sky blue? Explain in detail."}]
QUESTIONS = [
    "Why is the sky blue?",
    "How do cats purr?",
    "What is a good name for a parrot?",
    "How do I water a cactus?",
    "What is the capital of Japan?",
    "Why do leaves change colour in autumn?",
    "How long should I boil an egg?",
    "What is a LoRA adapter?",
]
RUNS = 3


def ignore_eos(runtime: Any) -> None:
    """Decode to the token limit, as llama-bench does: no end-of-sequence, no loop stop (the bench's
    only reach into the engine), so every run of a prompt decodes the same number of tokens."""
    import adapters.serving._streaming

    runtime._engine._eos = set()
    adapters.serving._streaming.loop_start = lambda text, tail_only=False: None


def single_stream(
    runtime: Any, prompts: dict[str, list[dict[str, str]]], new_tokens: int, adapter: str | None = None
) -> dict[str, Any]:
    """First token and decode speed of one request at a time (median of RUNS after a warm-up)."""
    out = {}
    for name, messages in prompts.items():
        runtime.generate(messages, max_new_tokens=4, adapter=adapter)  # warm-up
        runs = [runtime.generate(messages, max_new_tokens=new_tokens, adapter=adapter) for _ in range(RUNS)]
        out[name] = {
            "prompt_tokens": runs[0].prompt_tokens,
            "completion_tokens": runs[0].completion_tokens,
            "ttft_s": round(statistics.median(r.first_token_seconds or 0.0 for r in runs), 3),
            "decode_tok_s": round(statistics.median(r.tokens_per_second for r in runs), 1),
        }
        print(name, out[name], flush=True)
    return out


def llama_cpp(prompts: dict[str, list[dict[str, str]]], new_tokens: int, render: Any) -> dict[str, Any]:
    """llama.cpp on the wheel's own GGUF, in a process of its own: it runs its own OpenMP threads,
    which spin-wait by default (this process sets passive waiting for torch, which would make every
    one of llama.cpp's parallel regions pay a wake-up: 49 instead of 190 tok/s, measured)."""
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec("llama_cpp") is None:
        return {"skipped": "llama_cpp is not installed (pip install llama-cpp-python: builds ~12 min)"}
    rendered = {name: render(messages) for name, messages in prompts.items()}
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--llama-cpp",
            json.dumps({"prompts": rendered, "new_tokens": new_tokens}),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name, row in out.items():
        print("llama.cpp", name, row, flush=True)
    return out


def llama_cpp_child(job: dict[str, Any]) -> dict[str, Any]:
    """The llama.cpp measurement (run by :func:`llama_cpp` in a child process): each run from an empty
    key/value cache (llama-cpp-python otherwise reuses the previous run's prompt)."""
    os.environ.pop("OMP_WAIT_POLICY", None)  # set by _common; read when llama.cpp's OpenMP loads
    from llama_cpp import Llama

    from adapters.model import gguf_path

    llm = Llama(model_path=str(gguf_path()), n_threads=2, n_ctx=2048, verbose=False)
    out = {}
    for name, prompt in job["prompts"].items():
        runs = []
        for i in range(RUNS + 1):
            llm.reset()
            started = time.perf_counter()
            first = None
            count = 0
            for _ in llm.create_completion(
                prompt, max_tokens=job["new_tokens"], temperature=0.0, stream=True
            ):
                first = first or time.perf_counter()
                count += 1
            ended = time.perf_counter()
            if i and first is not None and count > 1:
                runs.append((first - started, (count - 1) / (ended - first)))
        out[name] = {
            "ttft_s": round(statistics.median(r[0] for r in runs), 3),
            "decode_tok_s": round(statistics.median(r[1] for r in runs), 1),
            "note": "stops at end-of-sequence (llama-cpp-python has no ignore-eos in create_completion)",
        }
    return out


def short_ask(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


def rag_ask(i: int) -> list[dict[str, str]]:
    return rag_messages(i % len(RAG_CASES), 5)  # ~1,000 tokens, as single_stream's RAG prompt


def concurrent(
    runtime: Any, count: int, new_tokens: int, adapters: list[Any] | None = None, ask: Any = short_ask
) -> dict[str, Any]:
    adapters = adapters or [None]
    started = time.perf_counter()
    futures = [
        runtime.submit(ask(i), max_new_tokens=new_tokens, adapter=adapters[i % len(adapters)])
        for i in range(count)
    ]
    results = [f.result() for f in futures]
    wall = time.perf_counter() - started
    tokens = sum(r.completion_tokens for r in results)
    return {
        "asks": count,
        "tokens": tokens,
        "aggregate_tok_s": round(tokens / wall, 1),
        "last_answer_s": round(wall, 2),
        "adapters": sorted({str(r.adapter) for r in results}),
    }


def concurrency(runtime: Any, new_tokens: int, ask: Any) -> list[dict[str, Any]]:
    """1, 2, 4, 8, 16 asks at once; each row's aggregate also as a multiple of one ask's."""
    rows = []
    for count in (1, 2, 4, 8, 16):
        rows.append(concurrent(runtime, count, new_tokens, ask=ask))
        print(ask.__name__, rows[-1], flush=True)
    for row in rows:
        row["vs_one"] = round(row["aggregate_tok_s"] / rows[0]["aggregate_tok_s"], 2)
    return rows


def loop_stall(runtime: Any, count: int, new_tokens: int) -> dict[str, Any]:
    """The longest the event loop was late while ``count`` answers streamed into it."""

    async def run() -> dict[str, Any]:
        late: list[float] = []
        done = asyncio.Event()
        pieces = 0

        def on_token(_piece: str) -> None:
            nonlocal pieces
            pieces += 1

        async def ticker() -> None:
            while not done.is_set():
                before = time.perf_counter()
                await asyncio.sleep(0.005)
                late.append(time.perf_counter() - before - 0.005)

        tick = asyncio.create_task(ticker())
        await asyncio.gather(
            *[
                runtime.agenerate(
                    [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                    max_new_tokens=new_tokens,
                    on_token=on_token,
                )
                for i in range(count)
            ]
        )
        done.set()
        await tick
        return {"asks": count, "pieces_streamed": pieces, "stall_max_ms": round(max(late) * 1000, 1)}

    return asyncio.run(run())


def random_adapter(plain_dir: Path, dest: Path, seed: int) -> Path:
    """A random (non-zero) LoRA adapter for the default model: serving cost does not depend on what
    it learned, and training one takes minutes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapters.training import TARGET_MODULES

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(plain_dir), dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=TARGET_MODULES, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.mul_(0.01)  # small, like a trained adapter's update
    peft_model.save_pretrained(str(dest))
    return dest


def main() -> None:
    from adapters.model import default_model_dir, plain_model_dir
    from adapters.serving import ModelRuntime

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None, help="models dir (default: settings)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--llama-cpp", default=None, help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args()
    if args.llama_cpp:
        import json

        print(json.dumps(llama_cpp_child(json.loads(args.llama_cpp))))
        return
    models = models_dir()
    n = args.new_tokens
    prompts = {"short_question": SHORT, "rag_1000_tokens": rag_messages(0, 5)}
    result: dict[str, Any] = {"machine": machine(), "threads": 2, "new_tokens": n}
    with ModelRuntime.load(
        default_model_dir(models), device="cpu", threads=2, max_batch=args.max_batch
    ) as rt:
        ignore_eos(rt)
        result["kernels"] = rt.info()["kernels"]
        result["fast_paths"] = rt.info()["fast_paths"]
        result["gptq_engine"] = single_stream(rt, prompts, n)
        result["concurrency"] = concurrency(rt, n, short_ask)
        result["concurrency_rag"] = concurrency(rt, n, rag_ask)
        one = result["concurrency"][0]["aggregate_tok_s"]
        with tempfile.TemporaryDirectory() as tmp:
            for i in (1, 2):
                rt.load_adapter(f"bench-{i}", random_adapter(plain_model_dir(models), Path(tmp) / str(i), i))
            row = concurrent(rt, 8, n, adapters=["bench-1", "bench-2", None])
            row["vs_one"] = round(row["aggregate_tok_s"] / one, 2)
            result["concurrency_two_adapters_and_base"] = row
            print(row, flush=True)
            # one request with an adapter: what the LoRA hooks cost
            result["adapter_single_stream"] = single_stream(rt, {"short_question": SHORT}, n, "bench-1")[
                "short_question"
            ]
        result["event_loop"] = loop_stall(rt, 8, n)
        print(result["event_loop"], flush=True)
        render = rt.render_prompt
    del rt
    # the fast runtime, two adapters loaded (what a serving bot holds, its embedder aside)
    result["peak_rss_gb_runtime"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    with ModelRuntime.load(
        default_model_dir(models), device="cpu", threads=2, max_batch=args.max_batch, fast_paths=False
    ) as rt:
        ignore_eos(rt)
        result["gptq_engine_without_fast_paths"] = single_stream(rt, prompts, n)
        result["concurrency_without_fast_paths"] = concurrency(rt, n, short_ask)
        result["concurrency_rag_without_fast_paths"] = concurrency(rt, n, rag_ask)
    result["llama_cpp"] = llama_cpp(prompts, n, render)
    with ModelRuntime.load(plain_model_dir(models), device="cpu", threads=2) as rt:
        ignore_eos(rt)
        result["fp32_engine"] = single_stream(rt, prompts, n)
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    result["machine"]["load_average_after"] = os.getloadavg()
    write("serving", result)


if __name__ == "__main__":
    main()
