"""Where a one-row decode step's time goes, and what the serving fast paths save of it (issue 13).

One row, one thread (as the engine runs small decode steps), the default model in bf16:

* one decoder layer's seven quantized projections called as gptqmodel serves them (its
  ``TorchAtenLinear.forward``, one call each) and as loopbot serves them (``adapters/serving/_fastpath.py``:
  the int4 kernel called directly, q/k/v and gate/up each multiplied as one matrix);
* the output projection (49,152 vocabulary logits): bf16 as loaded, and int8 with a scale per row,
  each on one and two threads;
* a whole greedy decode step after a short question, without and with the fast paths, and with the
  runtime's decode step written out (``adapters.serving.LlamaDecode``, the engine's growing cache);
* the streamer's loop check (``adapters.prompt.loop_start`` on the text so far), per token of a
  ~600-character answer, and the tokenizer's decode of the whole answer so far;
* with the fast paths, a decode step of 1 and 8 rows after ~1,000 tokens with transformers'
  ``DynamicCache`` (appends by copying) and with the engine's growing cache (appends in place);
* with the fast paths, a whole decode step of 1-32 rows (100 tokens of context each) through the int4
  kernel and through the dense bf16 weights: where ``DENSE_MIN_ROWS`` belongs;
* the runtime's decode step (logits included) of 1-16 rows after 100 and 1,050 tokens: written out in
  Python on one thread, and with the native kernels (``adapters/serving/csrc/decode.cpp``) on one and on two
  threads; and the one-row greedy decode speed of each.

    python bench/decode_overhead.py

Writes bench/results/decode_overhead.json. Take it on a quiet machine (the load average is recorded).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from _common import machine, models_dir, write

SHORT = [{"role": "user", "content": "Why is the sky blue? Explain in detail."}]


def _us(call: Any, runs: int = 300) -> float:
    """Median microseconds of ``call`` over five batches of ``runs`` calls, after a warm-up."""
    for _ in range(20):
        call()
    batches = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(runs):
            call()
        batches.append((time.perf_counter() - started) / runs * 1e6)
    return round(statistics.median(batches), 1)


def _layer_calls(layer: Any, x: Any, x_down: Any) -> Any:
    attention, mlp = layer.self_attn, layer.mlp

    def call() -> None:
        attention.q_proj(x), attention.k_proj(x), attention.v_proj(x), attention.o_proj(x)
        mlp.gate_proj(x), mlp.up_proj(x), mlp.down_proj(x_down)

    return call


def _decode_tok_s(
    model: Any,
    tokenizer: Any,
    steps: int = 64,
    written_out: bool = False,
    native: bool = False,
    threads: int = 1,
) -> float:
    """Greedy one-row decode speed after a short question: the model's forward and transformers' cache,
    or (``written_out``) the runtime's decode step (``LlamaDecode``, in Python or ``native`` on
    ``threads`` threads) and growing cache."""
    import torch
    from transformers import DynamicCache

    from adapters.serving import growing_cache

    decode = _forced(model, native, threads) if written_out else None
    text = tokenizer.apply_chat_template(SHORT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    runs = []
    for _ in range(4):
        torch.set_num_threads(2)
        cache = growing_cache(model.config) if decode else DynamicCache(config=model.config)
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token, length = int(out.logits[0, -1].argmax()), ids.shape[1]
        mask = torch.ones(1, length, dtype=torch.long)
        torch.set_num_threads(1)
        started = time.perf_counter()
        for step in range(steps):
            position = torch.tensor([[length + step]])
            if decode is not None:
                mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
                logits = decode(torch.tensor([[token]]), position, mask, cache)
            else:
                logits = model(input_ids=torch.tensor([[token]]), past_key_values=cache, position_ids=position,
                               use_cache=True).logits[:, -1]  # fmt: skip
            token = int(logits[0].argmax())
        runs.append(steps / (time.perf_counter() - started))
    return round(statistics.median(runs[1:]), 1)


def _step_ms(model: Any, rows: int, dense: bool, context: int = 100, growing: bool = False) -> float:
    """Median milliseconds of a decode step of ``rows`` rows on one thread; ``growing``: the engine's
    cache (adapters/serving/_cache.py) instead of transformers' ``DynamicCache``."""
    import torch
    from transformers import DynamicCache

    from adapters.serving import DENSE_MIN_ROWS, growing_cache

    linears = {id(f.linears): f.linears for m in model.modules() if hasattr(f := m.forward, "linears")}
    for group in linears.values():
        group.min_rows = 1 if dense else 10**9
    torch.set_num_threads(2)
    cache = growing_cache(model.config) if growing else DynamicCache(config=model.config)
    model(input_ids=torch.randint(100, 1000, (rows, context)), past_key_values=cache, use_cache=True,
          logits_to_keep=1)  # fmt: skip
    torch.set_num_threads(1)
    times = []
    for step in range(24):
        started = time.perf_counter()
        model(input_ids=torch.randint(100, 1000, (rows, 1)), past_key_values=cache,
              position_ids=torch.full((rows, 1), context + step), use_cache=True)  # fmt: skip
        times.append(time.perf_counter() - started)
    for group in linears.values():
        group.min_rows = DENSE_MIN_ROWS
    return round(statistics.median(times[4:]) * 1000, 2)


def _forced(model: Any, native: bool, threads: int) -> Any:
    """The runtime's decode step, native kernels registered for two threads (as the runtime does) and
    held to ``threads`` (the runtime's ``SplitChoice`` would otherwise pick)."""
    import torch

    from adapters.serving import LlamaDecode

    torch.set_num_threads(2)
    decode = LlamaDecode.for_model(model, native=native)
    assert decode is not None and decode.native is native
    decode.split.threads = lambda: threads
    return decode


def _written_out_step_ms(model: Any, rows: int, context: int, native: bool, threads: int) -> float:
    """Median milliseconds of the runtime's decode step (``LlamaDecode``, growing cache, logits
    included) of ``rows`` rows after ``context`` tokens: native kernels split across ``threads``, or
    the Python step on one thread."""
    import torch

    from adapters.serving import growing_cache

    decode = _forced(model, native, threads)
    torch.set_num_threads(2)
    cache = growing_cache(model.config)
    model(input_ids=torch.randint(100, 1000, (rows, context)), cache=cache, use_cache=True, logits_to_keep=1)
    torch.set_num_threads(1)
    mask = torch.ones(rows, context, dtype=torch.long)
    times = []
    for step in range(24):
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        started = time.perf_counter()
        decode(torch.randint(100, 1000, (rows, 1)), torch.full((rows, 1), context + step), mask, cache)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times[4:]) * 1000, 2)


def _output_head(model: Any) -> dict[str, float]:
    """Microseconds of the vocabulary logits of one row: bf16 as loaded and int8, one and two threads."""
    import torch

    head = model.get_output_embeddings()
    h = torch.randn(1, head.in_features, dtype=model.dtype)
    weight = head.weight.float()
    scale = weight.abs().amax(dim=1) / 127
    codes = (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    scale = scale.to(model.dtype)
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out[f"output_bf16_{threads}_threads_us"] = _us(lambda: head(h), 100)
        out[f"output_int8_{threads}_threads_us"] = _us(
            lambda: torch._weight_int8pack_mm(h, codes, scale), 100
        )
    return out


ANSWER = (
    "The Whisker Club meets every second Tuesday at the library. Bring your own cat photos and snacks; "
    "members vote on the monthly theme, and the treasurer collects dues in January. "
) * 4


def _streaming_ms(tokenizer: Any) -> dict[str, float]:
    """Milliseconds per token of the streamer's work on a growing answer (as if checked every token)."""
    from adapters.prompt import loop_start

    ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"][:150]
    texts = [tokenizer.decode(ids[:n], skip_special_tokens=True) for n in range(1, len(ids) + 1)]
    started = time.perf_counter()
    for n in range(1, len(ids) + 1):
        tokenizer.decode(ids[:n], skip_special_tokens=True)
    decode = (time.perf_counter() - started) / len(ids)
    started = time.perf_counter()
    for text in texts:
        loop_start(text, tail_only=True)
    check = (time.perf_counter() - started) / len(ids)
    return {"decode_so_far_ms": round(decode * 1000, 3), "loop_check_ms": round(check * 1000, 3)}


def main() -> int:
    import torch

    from adapters.model import default_model_dir, load_base_model
    from adapters.serving import install_fast_paths

    load = [round(x, 2) for x in os.getloadavg()]
    path = str(default_model_dir(models_dir()))
    result: dict[str, Any] = {"machine": machine(), "load_average_before": load}
    with torch.inference_mode():
        for label, fast in (("gptqmodel", False), ("loopbot_fast_paths", True)):
            torch.set_num_threads(2)
            model, tokenizer = load_base_model(path, device="cpu", dtype="auto")
            if fast:
                result["installed"] = install_fast_paths(model)
            layer = model.model.layers[3]
            x = torch.randn(1, 1, layer.self_attn.q_proj.in_features, dtype=model.dtype)
            x_down = torch.randn(1, 1, layer.mlp.down_proj.in_features, dtype=model.dtype)
            torch.set_num_threads(1)
            row = {
                "one_layer_projections_us": _us(_layer_calls(layer, x, x_down)),
                "decode_tok_s_one_thread": _decode_tok_s(model, tokenizer),
            }
            if fast:
                row["decode_tok_s_one_thread_written_out"] = _decode_tok_s(model, tokenizer, written_out=True)
                for threads in (1, 2):
                    row[f"decode_tok_s_native_{threads}_threads"] = _decode_tok_s(
                        model, tokenizer, written_out=True, native=True, threads=threads
                    )
                row["written_out_step_ms"] = {
                    f"{context}_context": {
                        rows: {
                            "python_1_thread": _written_out_step_ms(model, rows, context, False, 1),
                            "native_1_thread": _written_out_step_ms(model, rows, context, True, 1),
                            "native_2_threads": _written_out_step_ms(model, rows, context, True, 2),
                        }
                        for rows in (1, 2, 4, 8, 16)
                    }
                    for context in (100, 1050)
                }
                row["step_ms_by_rows"] = {
                    rows: {"int4": _step_ms(model, rows, False), "dense": _step_ms(model, rows, True)}
                    for rows in (1, 2, 4, 8, 16, 24, 32)
                }
                row["step_ms_1050_context"] = {
                    rows: {
                        "dynamic_cache": _step_ms(model, rows, False, 1050),
                        "growing_cache": _step_ms(model, rows, False, 1050, growing=True),
                    }
                    for rows in (1, 8)
                }
            else:
                row.update(_output_head(model))
                row["streaming_per_token"] = _streaming_ms(tokenizer)
            result[label] = row
            print(label, row, flush=True)
            del model
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write("decode_overhead", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
