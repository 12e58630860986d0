"""Integer activations x int4 weights (``adapters/serving/csrc/int4_matmul.h``) against torch's int4
kernel (``aten._weight_int4pack_mm_for_cpu``), one projection of the default model at a time, on one
thread as a decode step's share runs: microseconds per call for 1, 2, 4, 8, 16 rows (best of 100
after a warm-up) and each path's relative error against torch's kernel (bf16 output rounding is
~0.0004). The decode step itself, logits included, is timed by ``bench/decode_overhead.py``; the
divergence from the fp32 model by ``bench/quantization_quality.py``.

Run: ``python bench/int4_matmul.py [--models DIR]``; writes bench/results/int4_matmul.json. Take it on a
quiet machine (the load average is recorded).
"""

from __future__ import annotations

import time
from typing import Any

from _common import machine, models_dir, write

ROWS = (1, 2, 4, 8, 16)


def best_of(runs: int, call: Any, *args: Any) -> float:
    for _ in range(3):
        call(*args)
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        call(*args)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    import torch

    from adapters.model import default_model_dir, load_base_model
    from adapters.serving import install_fast_paths as install
    from adapters.serving import load_native_kernels

    why = load_native_kernels()
    if why is not None:
        raise SystemExit(f"the native kernels did not build: {why}")
    torch.set_num_threads(1)
    model, _ = load_base_model(default_model_dir(models_dir()), device="cpu", dtype="auto")
    install(model)
    layer = model.model.layers[3]
    groups = {
        "q/k/v": layer.self_attn.q_proj.forward.linears,
        "gate/up": layer.mlp.gate_proj.forward.linears,
        "down": layer.mlp.down_proj.forward.linears,
    }
    out: dict[str, Any] = {"machine": machine(), "threads": 1, "groups": {}}
    torch.manual_seed(0)
    with torch.inference_mode():
        for name, group in groups.items():
            laid = torch.ops.loopbot.int4_layout(group.packed, group.scales, group.group_size)
            rows_out = []
            for rows in ROWS:
                x = torch.randn(rows, group.in_features, dtype=torch.bfloat16)
                kernel = torch.ops.aten._weight_int4pack_mm_for_cpu
                theirs = kernel(x, group.packed, group.group_size, group.scales).float()
                row: dict[str, Any] = {
                    "rows": rows,
                    "torch_int4_us": round(
                        best_of(100, kernel, x, group.packed, group.group_size, group.scales) * 1e6, 1
                    ),
                }
                for bits in (16, 8):
                    ours = torch.ops.loopbot.int4_mm(x, *laid, bits).float()
                    row[f"int{bits}_us"] = round(
                        best_of(100, torch.ops.loopbot.int4_mm, x, *laid, bits) * 1e6, 1
                    )
                    row[f"int{bits}_speedup"] = round(row["torch_int4_us"] / row[f"int{bits}_us"], 2)
                    row[f"int{bits}_relative_error"] = round(float((ours - theirs).norm() / theirs.norm()), 4)
                rows_out.append(row)
                print(name, row, flush=True)
            out["groups"][f"{name} ({group.in_features} -> {sum(group.sizes)})"] = rows_out
    write("int4_matmul", out)


if __name__ == "__main__":
    main()
