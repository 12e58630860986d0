"""The serving fast paths (adapters/_fastpath.py): same results as the paths they replace."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from adapters import _fastpath

MODULE = SimpleNamespace(training=False, num_key_value_groups=3, is_causal=True)


def _qkv(batch: int, q_len: int, kv_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    return (
        torch.randn(batch, 9, q_len, 64, dtype=dtype),
        torch.randn(batch, 3, kv_len, 64, dtype=dtype),
        torch.randn(batch, 3, kv_len, 64, dtype=dtype),
    )


def _left_padded_mask(lengths: list[int], kv_len: int) -> torch.Tensor:
    """A decode step's boolean mask: row i sees only its last ``lengths[i]`` positions."""
    mask = torch.zeros(len(lengths), 1, 1, kv_len, dtype=torch.bool)
    for i, length in enumerate(lengths):
        mask[i, ..., kv_len - length :] = True
    return mask


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_decode_attention_matches_sdpa_with_padded_rows(dtype: torch.dtype, tolerance: float) -> None:
    q, k, v = _qkv(3, 1, 50, dtype)
    mask = _left_padded_mask([50, 20, 1], 50)  # a full row, a padded one, one seeing only itself
    ours, _ = _fastpath.decode_attention(MODULE, q, k, v, mask)
    theirs, _ = sdpa_attention_forward(MODULE, q, k, v, mask)
    assert ours.shape == theirs.shape == (3, 1, 9, 64) and ours.dtype == dtype
    assert torch.allclose(ours.float(), theirs.float(), atol=tolerance), (ours - theirs).abs().max()
    # The padding is really hidden: changing what a row cannot see does not change its output.
    k2, v2 = k.clone(), v.clone()
    k2[1, :, :30], v2[1, :, :30] = 100.0, -100.0
    again, _ = _fastpath.decode_attention(MODULE, q, k2, v2, mask)
    assert torch.equal(again[1], ours[1])


def test_decode_attention_takes_an_additive_mask_and_no_mask() -> None:
    q, k, v = _qkv(2, 1, 40, torch.float32)
    additive = torch.zeros(2, 1, 1, 40)
    additive[1, ..., :10] = torch.finfo(torch.float32).min
    for mask in (additive, None):
        ours, _ = _fastpath.decode_attention(MODULE, q, k, v, mask)
        theirs, _ = sdpa_attention_forward(MODULE, q, k, v, mask)
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_prompts_still_go_to_sdpa() -> None:
    q, k, v = _qkv(1, 12, 12, torch.float32)
    ours, _ = _fastpath.decode_attention(MODULE, q, k, v, None)
    theirs, _ = sdpa_attention_forward(MODULE, q, k, v, None)
    assert torch.equal(ours, theirs)


def test_dense_weights_multiply_like_the_int4_kernel(tiny_gptq_dir: Path) -> None:
    from adapters._loading import load_base_model

    model, _ = load_base_model(tiny_gptq_dir, device="cpu", dtype="bfloat16")
    assert _fastpath.add_dense_weights(model, min_rows=16) == 14  # 7 linear layers x 2 blocks
    layer = model.model.layers[0].mlp.down_proj
    assert layer.forward.dense_weight.shape == (layer.out_features, layer.in_features)
    torch.manual_seed(1)
    x = torch.randn(20, layer.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        dense = layer(x)  # 20 rows: the dense weight
        kernel = torch.cat([layer(row[None]) for row in x])  # one row at a time: the int4 kernel
    scale = kernel.float().abs().max()
    assert torch.allclose(dense.float(), kernel.float(), atol=0.02 * float(scale))


def test_a_plain_model_gets_no_dense_weights(tiny_model_dir: Path) -> None:
    from adapters._loading import load_base_model

    model, _ = load_base_model(tiny_model_dir, device="cpu")
    assert _fastpath.add_dense_weights(model) == 0


def _prompt_then_decode(model: object, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Logits of a prompt's last token, then of ``steps`` greedy decode steps through the cache."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)  # type: ignore[attr-defined]
    out = model(input_ids=ids, use_cache=True, cache=cache)  # type: ignore[operator]
    logits = [out.logits[:, -1]]
    for _ in range(steps):
        token = logits[-1].argmax(-1, keepdim=True)
        out = model(input_ids=token, use_cache=True, cache=cache)  # type: ignore[operator]
        logits.append(out.logits[:, -1])
    return torch.cat(logits).float()


def test_a_model_with_the_fast_paths_predicts_like_one_without(tiny_gptq_dir: Path) -> None:
    from adapters._loading import load_base_model

    fast, tokenizer = load_base_model(tiny_gptq_dir, device="cpu", dtype="bfloat16")
    slow, _ = load_base_model(tiny_gptq_dir, device="cpu", dtype="bfloat16")
    _fastpath.install(fast)
    ids = tokenizer(
        "Retraining runs in its own process and the adapter is promoted only if it is better.",
        return_tensors="pt",
    )["input_ids"]
    assert ids.shape[1] >= _fastpath.DENSE_MIN_ROWS  # the prompt takes the dense weights
    with torch.inference_mode():
        ours, theirs = _prompt_then_decode(fast, ids, 4), _prompt_then_decode(slow, ids, 4)
    spread = float(theirs.std())
    assert float((ours - theirs).abs().max()) < 0.1 * spread, (ours - theirs).abs().max()


def test_the_runtime_installs_the_fast_paths_unless_told_not_to(tiny_gptq_dir: Path) -> None:
    from adapters.runtime import ModelRuntime

    with ModelRuntime.load(tiny_gptq_dir, device="cpu", dtype="bfloat16") as runtime:
        assert runtime.info()["fast_paths"] == {"attention": _fastpath.ATTENTION, "dense_prompt_layers": 14}
    with ModelRuntime.load(tiny_gptq_dir, device="cpu", dtype="bfloat16", fast_paths=False) as runtime:
        assert runtime.info()["fast_paths"] == {}
