"""Single-stream decode: eager with the runtime's growing cache, a static KV cache, and torch.compile.

Issue 13 asks to measure a static KV cache and ``torch.compile`` for the decode step. This takes the
runtime's own model (GPTQ 4-bit served in bf16 with loopbot's CPU fast paths, no adapter) and decodes
greedily, one row, after a short question and after a ~1,000-token RAG prompt:

* **eager, dynamic cache**: what the batching engine does for one row (transformers' ``DynamicCache``);
* **eager, static cache**: transformers' ``StaticCache`` sized to prompt + new tokens;
* **compiled, static cache**: the model's forward through ``torch.compile`` (inductor, CPU), the
  static cache giving it fixed shapes; compile time reported apart.

Decode runs on one thread, as the engine runs small decode steps (README, "CPU path"); ``--threads 2``
measures two. Greedy tokens of each path are compared with the eager dynamic path's.

    python bench/compile_decode.py [--new-tokens 64] [--threads 1]

Writes bench/results/compile_decode.json. Take it on a quiet machine (the load average is recorded).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from _common import machine, models_dir, rag_messages, write

SHORT = [{"role": "user", "content": "Why is the sky blue? Explain in detail."}]
RUNS = 3


def _prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> Any:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def _decode(
    model: Any, ids: Any, new_tokens: int, static: bool, forward: Any
) -> tuple[list[int], float, float]:
    """Greedy ``new_tokens`` after ``ids``: (tokens, first-token seconds, decode tok/s)."""
    import torch
    from transformers import DynamicCache, StaticCache

    length = ids.shape[1]
    with torch.inference_mode():
        started = time.perf_counter()
        if static:
            cache: Any = StaticCache(config=model.config, max_cache_len=length + new_tokens)
            out = model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(length), use_cache=True,
                        logits_to_keep=1)  # fmt: skip
        else:
            cache = DynamicCache(config=model.config)
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = int(out.logits[0, -1].argmax())
        first = time.perf_counter() - started
        tokens = [token]
        started = time.perf_counter()
        for step in range(new_tokens - 1):
            position = torch.tensor([length + step])
            step_ids = torch.tensor([[token]])
            if static:
                out = forward(input_ids=step_ids, past_key_values=cache, cache_position=position,
                              position_ids=position.unsqueeze(0), use_cache=True)  # fmt: skip
            else:
                out = forward(input_ids=step_ids, past_key_values=cache, position_ids=position.unsqueeze(0),
                              use_cache=True)  # fmt: skip
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
        decode = (new_tokens - 1) / (time.perf_counter() - started)
    return tokens, first, decode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="models dir (default: the settings')")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads while decoding")
    args = parser.parse_args()
    import torch

    from adapters.model import default_model_dir, load_base_model
    from adapters.serving import install_fast_paths

    load = [round(x, 2) for x in os.getloadavg()]
    model, tokenizer = load_base_model(str(default_model_dir(models_dir())), device="cpu", dtype="auto")
    install_fast_paths(model)
    prompts = {"short": _prompt_ids(tokenizer, SHORT), "rag": _prompt_ids(tokenizer, rag_messages(0, 3))}
    result: dict[str, Any] = {"machine": machine(), "load_average_before": load, "threads": args.threads}
    compiled = None
    for name, ids in prompts.items():
        row: dict[str, Any] = {"prompt_tokens": int(ids.shape[1])}
        reference = None
        for path in ("eager_dynamic", "eager_static", "compiled_static"):
            static = path != "eager_dynamic"
            forward = model
            if path == "compiled_static":
                if compiled is None:
                    torch.set_num_threads(2)
                    started = time.perf_counter()
                    compiled = torch.compile(model.forward, dynamic=False)
                    _decode(model, ids, 4, True, compiled)  # compiles (the first shapes)
                    result["compile_seconds"] = round(time.perf_counter() - started, 1)
                forward = compiled
            torch.set_num_threads(args.threads)
            runs = []
            tokens: list[int] = []
            for _ in range(RUNS + 1):  # the first is a warm-up (a new static length recompiles)
                torch.set_num_threads(2)  # the prompt on both threads, as the engine does
                tokens, first, decode = _decode(
                    model, ids, args.new_tokens, static, _Threads(forward, args.threads)
                )
                runs.append((first, decode))
            firsts, decodes = zip(*runs[1:], strict=True)
            reference = reference or tokens
            row[path] = {
                "first_token_s": round(statistics.median(firsts), 3),
                "decode_tok_s": round(statistics.median(decodes), 1),
                "same_tokens_as_eager_dynamic": sum(a == b for a, b in zip(tokens, reference, strict=True)),
            }
            print(name, path, row[path], flush=True)
        result[name] = row
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write("compile_decode", result)
    return 0


class _Threads:
    """Calls ``forward`` on ``threads`` torch threads (decode steps; the prompt runs on two)."""

    def __init__(self, forward: Any, threads: int) -> None:
        self.forward, self.threads = forward, threads

    def __call__(self, **kwargs: Any) -> Any:
        import torch

        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return self.forward(**kwargs)


if __name__ == "__main__":
    raise SystemExit(main())
