"""The engine's growing key/value cache (adapters/serving/_cache.py): the same attention as transformers' own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from adapters.serving._cache import HEADROOM_MIN, GrowingLayer, growing_cache


def _greedy_logits(model: object, ids: torch.Tensor, cache: object, steps: int) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=True, past_key_values=cache)  # type: ignore[operator]
    logits = [out.logits[:, -1]]
    for _ in range(steps):
        out = model(input_ids=logits[-1].argmax(-1, keepdim=True), use_cache=True, past_key_values=cache)  # type: ignore[operator]
        logits.append(out.logits[:, -1])
    return torch.stack(logits)


def test_a_growing_cache_decodes_like_transformers_cache(tiny_model_dir: Path) -> None:
    from adapters.model import load_base_model

    model, tokenizer = load_base_model(tiny_model_dir, device="cpu")
    ids = tokenizer(["Mochi sneezes in the morning"] * 2, return_tensors="pt")["input_ids"]
    steps = HEADROOM_MIN + 20  # past the first growth of every layer's buffer
    with torch.inference_mode():
        ours_cache = growing_cache(model.config)
        assert all(isinstance(layer, GrowingLayer) for layer in ours_cache.layers)
        ours = _greedy_logits(model, ids, ours_cache, steps)
        theirs = _greedy_logits(model, ids, DynamicCache(config=model.config), steps)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert ours_cache.get_seq_length() == ids.shape[1] + steps
    assert ours_cache.layers[0]._keys.shape[2] > ours_cache.get_seq_length()  # room kept for more


def test_rows_assigned_as_the_engine_does_keep_their_tokens() -> None:
    """The engine drops rows and padding by assigning keys, then values: each keeps its own length,
    and the next token lands after them."""
    layer = GrowingLayer()
    keys, values = torch.randn(3, 2, 10, 4), torch.randn(3, 2, 10, 4)
    layer.update(keys, values)
    layer.update(torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4))  # grows: 11 filled, room for more
    before_k, before_v = layer.keys.clone(), layer.values.clone()
    index = torch.tensor([0, 2])
    layer.keys = layer.keys.index_select(0, index)[:, :, 3:]  # values are read after keys changed
    layer.values = layer.values.index_select(0, index)[:, :, 3:]
    assert layer.keys.shape == layer.values.shape == (2, 2, 8, 4)
    step_k, step_v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    k, v = layer.update(step_k, step_v)
    assert torch.equal(k, torch.cat([before_k[index, :, 3:], step_k], dim=2))
    assert torch.equal(v, torch.cat([before_v[index, :, 3:], step_v], dim=2))
    assert layer.get_seq_length() == 9


def test_room_gives_contiguous_buffers_and_advance_counts_what_was_written() -> None:
    """Code that writes a step's token itself (the native decode step) asks for room, writes at the
    filled length, then advances: the cache reads as if ``update`` had appended the token."""
    layer = GrowingLayer()
    prompt_k = torch.randn(2, 5, 3, 4).transpose(1, 2)  # (rows, heads, tokens, dim), not contiguous
    prompt_v = torch.randn(2, 5, 3, 4).transpose(1, 2)
    layer.update(prompt_k, prompt_v)
    keys, values, length = layer.room(1)
    assert length == 5 and keys.is_contiguous() and values.is_contiguous() and keys.shape[2] > 5
    step_k, step_v = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
    keys[:, :, length : length + 1] = step_k
    values[:, :, length : length + 1] = step_v
    layer.advance(1)
    assert torch.equal(layer.keys, torch.cat([prompt_k, step_k], dim=2))
    assert torch.equal(layer.values, torch.cat([prompt_v, step_v], dim=2))
    assert layer.room(1)[0] is keys  # room left: the same buffer
    layer.keys = layer.keys[:1]  # the engine dropped a row: values not yet assigned
    layer.values = layer.values[:, :, :4]
    with pytest.raises(ValueError, match="differ in length"):
        layer.room(1)
