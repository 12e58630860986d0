"""Two CPU fast paths for serving, each chosen by measurement (``bench/serving.py``, README "Serving").

- **Decode attention without the flash kernel.** For one new token per row, torch's CPU flash
  attention splits its work by (row, head, query block) and pays its set-up per call: 0.6 ms a layer
  for one row at 1,000 tokens of context, 4.6 ms for eight rows. The same attention written as two
  matmuls over the key/value heads (queries grouped by the head they share) takes 0.3 and 0.65 ms,
  computed in fp32 as the flash kernel does inside (same error against an fp32 reference). Prompts
  (several query tokens) still go to transformers' SDPA path.
- **Dense bf16 weights for prompts.** gptqmodel's ``TorchAtenLinear`` multiplies by the packed int4
  weights (``aten._weight_int4pack_mm_for_cpu``): twice as fast as a dense matmul for one row, but
  for a 1,000-token prompt it reaches ~160 GFLOP/s where a dense bf16 matmul (AVX-512 BF16) reaches
  ~420. Each quantized layer keeps a bf16 copy of its dequantized weight (~210 MB for the default
  model) and uses it when a call has ``DENSE_MIN_ROWS`` rows or more: the same weight, dequantized by
  gptqmodel from the same packed integers, scales and zero points (equal to bf16 rounding).

Only the serving runtime installs them (:func:`install`); training runs its own kernel.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

ATTENTION = "loopbot_sdpa"  # the attention implementation name registered with transformers
# Rows from which the dense weight is faster than the int4 kernel: on one thread (small decode steps)
# a layer took 701 vs 623 us at 8 rows, 1,427 vs 946 at 16; at one row the kernel is twice as fast.
DENSE_MIN_ROWS = 8


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


def add_dense_weights(model: Any, min_rows: int = DENSE_MIN_ROWS) -> int:
    """Give every ``TorchAtenLinear`` layer of ``model`` a dense bf16 weight for calls of ``min_rows``
    rows or more (see the module docstring); returns how many layers got one. Call it before the
    model's first forward: gptqmodel dequantizes from the checkpoint's packing (0.4 s for the default
    model), which the layer's first forward replaces by the kernel's."""
    import torch

    try:
        from gptqmodel.nn_modules.qlinear.torch_aten_kernel import TorchAtenLinear
    except ImportError:  # a plain model, or a gptqmodel without this kernel: nothing to do
        return 0
    dtype = model.dtype  # the activations' dtype: the kernel packs its scales for it on first use
    if dtype not in (torch.bfloat16, torch.float16):
        return 0
    count = 0
    with torch.inference_mode():
        for module in model.modules():
            # linear_mode is set by the layer's first forward, which repacks its weights for the kernel
            if not isinstance(module, TorchAtenLinear) or module.training or module.linear_mode is not None:
                continue
            dense = module.dequantize_weight().t().to(dtype).contiguous()  # (out, in), as F.linear wants
            module.forward = _dense_forward(module, module.forward, dense, min_rows)
            count += 1
    return count


def _dense_forward(module: Any, kernel_forward: Any, weight: Any, min_rows: int) -> Any:
    import torch.nn.functional as F

    def forward(x: Any) -> Any:
        if x.numel() < min_rows * x.shape[-1] or x.dtype != weight.dtype or x.requires_grad:
            return kernel_forward(x)
        return F.linear(x, weight, module.bias)

    forward.dense_weight = weight  # type: ignore[attr-defined]  # tests and benchmarks read it
    return forward


def install(model: Any) -> dict[str, Any]:
    """Both fast paths on a loaded serving model; returns what was installed (for ``info()``)."""
    use_decode_attention(model)
    dense = add_dense_weights(model)
    if dense:
        log.info("dense bf16 weights for prompts on %d quantized layers", dense)
    return {"attention": ATTENTION, "dense_prompt_layers": dense}
