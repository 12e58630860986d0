"""CPU fast paths for serving, each chosen by measurement (``bench/serving.py``,
``bench/decode_overhead.py``, README "Serving").

- **Decode attention without the flash kernel.** For one new token per row, torch's CPU flash
  attention splits its work by (row, head, query block) and pays its set-up per call: 0.6 ms a layer
  for one row at 1,000 tokens of context, 4.6 ms for eight rows. The same attention written as two
  matmuls over the key/value heads (queries grouped by the head they share) takes 0.3 and 0.65 ms,
  computed in fp32 as the flash kernel does inside (same error against an fp32 reference). Prompts
  (several query tokens) still go to transformers' SDPA path.
- **Dense weights for prompts.** gptqmodel's ``TorchAtenLinear`` multiplies by the packed int4
  weights (``aten._weight_int4pack_mm_for_cpu``): twice as fast as a dense matmul for one row, but
  for a 1,000-token prompt it reaches ~160 GFLOP/s where a dense bf16 matmul (AVX-512 BF16) reaches
  ~420. Each quantized layer keeps a dense copy of its dequantized weight and uses it when a call has
  ``DENSE_MIN_ROWS`` rows or more: the same weight, dequantized by gptqmodel from the same packed
  integers, scales and zero points (equal to bf16 rounding). The copy is bf16 (~210 MB for the
  default model) where the CPU multiplies bf16 natively, fp32 (~420 MB) where it does not
  (:func:`prompt_weight_dtype`, measured at load): an AVX2 CPU without AVX-512 BF16 multiplies bf16
  at ~14 GFLOP/s and fp32 at ~140, so a 1,000-token prompt took 14 s instead of 2.7.
- **Projections served directly, siblings together** (:class:`_Linears`). Below ``DENSE_MIN_ROWS``
  the int4 kernel is called without gptqmodel's per-call checks, and layers that read the same input
  (q/k/v, gate/up) are multiplied as one matrix: a block's seven projections 154 -> 122 us at one
  row, the same integers and the same bits out. Act-order layers (permuted input columns) keep
  gptqmodel's kernel and get only the dense weights.
- **int8 vocabulary logits** (:func:`add_int8_output`): the output projection, the largest single
  matmul of a decode step (3.0 ms of ~13 at one row), from int8 weights on every thread: 0.4-0.6 ms.
  Divergence from the fp32 model unchanged (agreement 0.902, KL 0.087 vs 0.087).

The decode step written out (:class:`adapters.serving._decode.LlamaDecode`) is the last of them. Only
the serving runtime installs them (:func:`install`); training runs its own kernel.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

ATTENTION = "loopbot_sdpa"  # the attention implementation name registered with transformers
# Rows from which the dense weights are faster than the int4 kernel, for a whole decode step on one
# thread (bench/decode_overhead.py; the int4 weights stay in cache, the dense ones do not): 8 rows
# 23 vs 30 ms, 16 rows 38.5 vs 39.3, 24 rows 54.5 vs 47.8. One layer timed alone looks dense-faster
# from 8 rows, but it reuses its weights from cache. Prompts (on two threads) are denser still.
DENSE_MIN_ROWS = 16


def decode_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention for transformers' ``AttentionInterface``: explicit matmuls for one query token per
    row, transformers' SDPA for anything else. Shapes as transformers passes them: query
    ``(batch, heads, q_len, dim)``, key/value ``(batch, kv_heads, kv_len, dim)``, a boolean or additive
    mask ``(batch, 1, q_len, kv_len)`` or None; returns ``(batch, q_len, heads, dim)``."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    if q_len != 1 or module.training or dropout or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    # queries grouped by the key/value head they share: (batch, kv_heads, heads per kv head, dim)
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim).float()
    scores = torch.matmul(grouped, key.float().transpose(-1, -2)).mul_(scale)
    if attention_mask is not None:
        mask = attention_mask.reshape(batch, 1, 1, -1)
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask.float())
    out = torch.matmul(torch.softmax(scores, dim=-1), value.float())
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).to(query.dtype), None


def use_decode_attention(model: Any) -> None:
    """Register :func:`decode_attention` (masks built as for SDPA) and switch ``model`` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, decode_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    model.set_attn_implementation(ATTENTION)


@functools.cache
def prompt_weight_dtype(dtype: Any) -> Any:
    """The dtype of the dense prompt weights for ``dtype`` activations: ``dtype`` itself where this
    CPU multiplies it at least half as fast as fp32 (inputs converted to fp32 and back included), else
    fp32. Measured once per process on a prompt-sized matmul (256 x 576 by 1536, ~0.1 s at worst):
    CPUs with AVX-512 BF16 or AMX multiply bf16 natively, AVX2-only ones ~10x slower than fp32."""
    import time

    import torch
    import torch.nn.functional as F

    if dtype == torch.float32:
        return dtype

    def seconds(weight_dtype: Any) -> float:
        x = torch.randn(256, 576, dtype=dtype)
        w = torch.randn(1536, 576, dtype=weight_dtype)
        F.linear(x.to(weight_dtype), w).to(dtype)  # warm-up
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            F.linear(x.to(weight_dtype), w).to(dtype)
            best = min(best, time.perf_counter() - started)
        return best

    with torch.inference_mode():
        native, wide = seconds(dtype), seconds(torch.float32)
    chosen = dtype if native <= 2 * wide else torch.float32
    log.info(
        "prompt weights in %s (a prompt-sized %s matmul %.1f ms, fp32 %.1f ms)",
        chosen,
        dtype,
        native * 1e3,
        wide * 1e3,
    )
    return chosen


def _prompt_linear(x: Any, weight: Any, bias: Any = None) -> Any:
    """``F.linear`` on the dense prompt weight, in its dtype (:func:`prompt_weight_dtype`), the result
    in ``x``'s: fp32 products of bf16 values are exact and summed in fp32, as the bf16 matmul sums."""
    import torch.nn.functional as F

    if x.dtype == weight.dtype:
        return F.linear(x, weight, bias)
    out = F.linear(x.to(weight.dtype), weight, None if bias is None else bias.to(weight.dtype))
    return out.to(x.dtype)


# Sibling layers that read the same input: multiplied as one matrix (see :class:`_Linears`).
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def serve_quantized_layers(model: Any, min_rows: int = DENSE_MIN_ROWS) -> dict[str, int]:
    """Serve every ``TorchAtenLinear`` layer of ``model`` through :class:`_Linears`: a dense bf16
    weight for calls of ``min_rows`` rows or more, the int4 kernel called directly below that, and
    sibling layers (:data:`SIBLINGS`) multiplied together. Returns how many layers got a dense weight
    and how many sibling groups were fused; layers it cannot serve so (act-order) keep gptqmodel's
    forward with a dense weight for prompts. Call it before the model's first forward: gptqmodel
    dequantizes from the checkpoint's packing (0.4 s for the default model), then repacks for its
    kernel here."""
    import torch

    try:
        from gptqmodel.nn_modules.qlinear.torch_aten_kernel import TorchAtenLinear
    except ImportError:  # a plain model, or a gptqmodel without this kernel: nothing to do
        return {"dense_prompt_layers": 0, "fused_groups": 0}
    dtype = model.dtype  # the activations' dtype: the kernel packs its scales for it
    if dtype not in (torch.bfloat16, torch.float16):
        return {"dense_prompt_layers": 0, "fused_groups": 0}
    served: set[int] = set()
    fused = 0
    with torch.inference_mode():
        for parent in list(model.modules()):
            children = dict(parent.named_children())
            layers = [m for m in children.values() if _servable(m, TorchAtenLinear)]
            groups = [
                [children[name] for name in names]
                for names in SIBLINGS
                if all(name in children and children[name] in layers for name in names)
            ]
            grouped = {id(m) for group in groups for m in group}
            for group in [*groups, *([m] for m in layers if id(m) not in grouped)]:
                _Linears(group, dtype, min_rows)
                served.update(id(m) for m in group)
                fused += len(group) > 1
            for module in children.values():  # e.g. act-order: gptqmodel's kernel, dense weights for prompts
                fresh = (
                    isinstance(module, TorchAtenLinear) and not module.training and module.linear_mode is None
                )
                if fresh and id(module) not in served:
                    dense = (
                        module.dequantize_weight().t().to(prompt_weight_dtype(dtype)).contiguous()
                    )  # (out, in)
                    module.forward = _dense_forward(module, module.forward, dense, min_rows, dtype)
                    served.add(id(module))
    return {"dense_prompt_layers": len(served), "fused_groups": fused}


def _dense_forward(module: Any, kernel_forward: Any, weight: Any, min_rows: int, dtype: Any) -> Any:
    """gptqmodel's forward, or the dense weight for calls of ``min_rows`` rows or more of ``dtype``."""

    def forward(x: Any) -> Any:
        if x.numel() < min_rows * x.shape[-1] or x.dtype != dtype or x.requires_grad:
            return kernel_forward(x)
        return _prompt_linear(x, weight, module.bias)

    forward.dense_weight = weight  # type: ignore[attr-defined]  # tests and benchmarks read it
    return forward


def _servable(module: Any, kind: Any) -> bool:
    """A quantized layer :class:`_Linears` can serve: inference, no bias or gptqmodel adapter, input
    columns in order (no act-order permutation), the CPU int4 kernel present, not yet transformed."""
    return (
        isinstance(module, kind)
        and not module.training
        and module.linear_mode is None
        and module.bias is None
        and not module.adapter
        and module._cpu_fused_available()
        and module._ret_idx_is_identity()
    )


class _Linears:
    """Quantized linear layers that read the same input (one, or siblings such as q, k and v),
    multiplied as one: their int4-packed weights and scales concatenated by output feature, their
    dense bf16 weights likewise. Fewer, larger matmuls and no gptqmodel per-call checks: a block's seven
    projections take 122 us instead of 154 at one row (bench/decode_overhead.py).

    Each layer's ``forward`` asks :meth:`output` for its share: the first sibling called with an input
    computes every sibling's output, the others take theirs (same input object) without computing.
    LoRA deltas are added to the joint output (:attr:`lora`, set by the runtime's LoRA bank); forward
    hooks on a layer still see that layer's own output."""

    def __init__(self, layers: list[Any], dtype: Any, min_rows: int):
        import torch

        wide = prompt_weight_dtype(dtype)
        dense = [layer.dequantize_weight().t().to(wide).contiguous() for layer in layers]  # (out, in)
        for layer in layers:
            layer.transform("cpu", dtype=dtype)  # the kernel's packing, as its first forward would
            layer.linear_mode = "inference"
        self.in_features = layers[0].in_features
        self.group_size = layers[0].group_size
        self.sizes = [layer.out_features for layer in layers]
        self.min_rows = min_rows
        self.dtype = dtype
        self.dense = torch.cat(dense) if len(dense) > 1 else dense[0]
        self.packed = torch.cat([layer.qweight for layer in layers]) if len(layers) > 1 else layers[0].qweight
        self.scales = torch.cat([layer.scales_and_zeros for layer in layers], dim=1).contiguous()
        self._input: Any = None
        self._outputs: list[Any] = []
        self.layers = layers
        # ``(x, output) -> output`` with LoRA deltas added, set by the runtime's LoRA bank (adapters/serving/_lora.py)
        self.lora: Any = None
        start = 0
        for index, (layer, size) in enumerate(zip(layers, self.sizes, strict=True)):
            layer.qweight = self.packed[start : start + size]  # a view: the layer's kernel still works
            layer.forward = self._forward(index, layer.forward, self.dense[start : start + size])
            start += size

    def multiply(self, x: Any) -> Any:
        """``x @ W.T`` for every layer at once (the outputs side by side)."""
        import torch

        rows = x.numel() // self.in_features
        flat = x.reshape(rows, self.in_features)
        if rows >= self.min_rows:
            out = _prompt_linear(flat, self.dense)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                flat.contiguous(), self.packed, self.group_size, self.scales
            )
        out = out.reshape(*x.shape[:-1], out.shape[-1])
        return out if self.lora is None else self.lora(x, out)

    def output(self, index: int, x: Any) -> Any:
        """Layer ``index``'s output for ``x``."""
        if len(self.sizes) == 1:
            return self.multiply(x)
        if x is not self._input or self._outputs[index] is None:
            self._input = x
            self._outputs = list(self.multiply(x).split(self.sizes, dim=-1))
        out, self._outputs[index] = self._outputs[index], None
        if all(o is None for o in self._outputs):
            self._input = None  # nothing held between forwards
        return out

    def _forward(self, index: int, kernel_forward: Any, weight: Any) -> Any:
        def forward(x: Any) -> Any:
            if x.dtype != self.dtype or x.requires_grad:
                return kernel_forward(x)  # gptqmodel's own path (and its message for a wrong dtype)
            return self.output(index, x)

        forward.dense_weight = weight  # type: ignore[attr-defined]  # tests and benchmarks read them
        forward.linears = self  # type: ignore[attr-defined]
        return forward


def add_int8_output(model: Any, threads: int) -> bool:
    """Serve the output projection (vocabulary logits) of a bf16/fp16 model from int8 weights, one
    scale per vocabulary row, on ``threads`` threads: it reads 28 MB instead of 57 per token for the
    default model, 0.4-0.6 ms instead of 3.0-3.2 in bf16 on one thread (bench/decode_overhead.py). The input
    embedding it may be tied to keeps its own weights. False (nothing changed) for an fp32 model."""
    import torch

    head = model.get_output_embeddings()
    dtype = model.dtype
    if dtype not in (torch.bfloat16, torch.float16) or not isinstance(head, torch.nn.Linear):
        return False
    with torch.inference_mode():
        weight = head.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        codes = (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
        scales = scale.to(dtype)
    del weight
    full_forward = head.forward

    def forward(x: Any) -> Any:
        if x.dtype != dtype or x.requires_grad:
            return full_forward(x)
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        before = torch.get_num_threads()
        # one large matmul: worth waking every thread (decode steps run on one)
        torch.set_num_threads(threads)
        try:
            out = torch._weight_int8pack_mm(flat, codes, scales)
        finally:
            torch.set_num_threads(before)
        if head.bias is not None:
            out = out + head.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])

    head.forward = forward  # type: ignore[method-assign,assignment]
    return True


def install(model: Any) -> dict[str, Any]:
    """The fast paths on a loaded serving model; returns what was installed (for ``info()``)."""
    import torch

    use_decode_attention(model)
    linears = serve_quantized_layers(model)
    if linears["dense_prompt_layers"]:
        log.info("quantized layers served directly: %s", linears)
    return {"attention": ATTENTION, **linears, "int8_output": add_int8_output(model, torch.get_num_threads())}
