"""The serving fast paths (adapters/serving/_fastpath.py): same results as the paths they replace."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from adapters.serving import _fastpath

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


@pytest.mark.parametrize("wide", [torch.bfloat16, torch.float32])
def test_dense_weights_multiply_like_the_int4_kernel(
    tiny_gptq_dir: Path, wide: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In bf16 (CPUs that multiply it natively) and in fp32 (AVX2-only CPUs): the same products."""
    from adapters.model import load_base_model

    monkeypatch.setattr(_fastpath, "prompt_weight_dtype", lambda dtype: wide)
    model, _ = load_base_model(tiny_gptq_dir, device="cpu", dtype="bfloat16")
    served = _fastpath.serve_quantized_layers(model, min_rows=16)
    assert served == {"dense_prompt_layers": 14, "fused_groups": 4}  # 7 layers, q/k/v and gate/up x 2 blocks
    layer = model.model.layers[0].mlp.down_proj
    assert layer.forward.dense_weight.shape == (layer.out_features, layer.in_features)
    assert layer.forward.dense_weight.dtype == wide
    torch.manual_seed(1)
    x = torch.randn(20, layer.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        dense = layer(x)  # 20 rows: the dense weight
        kernel = torch.cat([layer(row[None]) for row in x])  # one row at a time: the int4 kernel
    assert dense.dtype == torch.bfloat16
    scale = kernel.float().abs().max()
    assert torch.allclose(dense.float(), kernel.float(), atol=0.02 * float(scale))


def test_prompt_weights_are_bf16_or_fp32_by_measurement() -> None:
    assert _fastpath.prompt_weight_dtype(torch.float32) == torch.float32  # nothing to measure
    assert _fastpath.prompt_weight_dtype(torch.bfloat16) in (torch.bfloat16, torch.float32)
    x, w = torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(3, 8)
    wide = _fastpath._prompt_linear(x, w)
    assert wide.dtype == torch.bfloat16
    assert torch.equal(wide, torch.nn.functional.linear(x.float(), w).bfloat16())


def test_a_plain_model_gets_no_dense_weights(tiny_model_dir: Path) -> None:
    from adapters.model import load_base_model

    model, _ = load_base_model(tiny_model_dir, device="cpu")
    assert _fastpath.serve_quantized_layers(model) == {"dense_prompt_layers": 0, "fused_groups": 0}
    assert not _fastpath.add_int8_output(model, threads=1)  # fp32 logits stay as they are


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
    from adapters.model import load_base_model

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
    from adapters.serving import ModelRuntime

    with ModelRuntime.load(tiny_gptq_dir, device="cpu", dtype="bfloat16") as runtime:
        assert runtime.info()["fast_paths"] == {
            "attention": _fastpath.ATTENTION,
            "dense_prompt_layers": 14,
            "fused_groups": 4,
            "int8_output": True,
            "decode_step": "native kernels",
        }
    with ModelRuntime.load(tiny_gptq_dir, device="cpu", dtype="bfloat16", native_decode=False) as runtime:
        info = runtime.info()["fast_paths"]
        assert info["decode_step"] == "written out in Python (native kernels: turned off)"
        assert runtime.generate([{"role": "user", "content": "Hi"}], max_new_tokens=3).completion_tokens
    with ModelRuntime.load(tiny_gptq_dir, device="cpu", dtype="bfloat16", fast_paths=False) as runtime:
        assert runtime.info()["fast_paths"] == {}


def _projections(model: object, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every projection of the first block applied to ``x``, siblings in the order the model calls them."""
    block = model.model.layers[0]  # type: ignore[attr-defined]
    attention, mlp = block.self_attn, block.mlp
    out = {name: getattr(attention, name)(x) for name in ("q_proj", "k_proj", "v_proj")}
    out.update({name: getattr(mlp, name)(x) for name in ("gate_proj", "up_proj")})
    out["o_proj"] = attention.o_proj(torch.randn(*x.shape[:-1], attention.o_proj.in_features, dtype=x.dtype))
    return out


def test_siblings_multiplied_together_give_each_layer_its_own_output(tiny_gptq_dir: Path) -> None:
    from adapters.model import load_base_model

    fast, _ = load_base_model(tiny_gptq_dir, device="cpu", dtype="bfloat16")
    slow, _ = load_base_model(tiny_gptq_dir, device="cpu", dtype="bfloat16")
    _fastpath.install(fast)
    hidden = fast.config.hidden_size
    with torch.inference_mode():
        for rows in (1, 3, 20):  # the int4 kernel, then the dense weights
            torch.manual_seed(rows)
            x = torch.randn(1, rows, hidden, dtype=torch.bfloat16)
            torch.manual_seed(0)
            ours = _projections(fast, x)
            torch.manual_seed(0)
            theirs = _projections(slow, x)
            for name, expected in theirs.items():
                assert ours[name].shape == expected.shape, name
                if rows < _fastpath.DENSE_MIN_ROWS:  # the same kernel on the same integers: the same bits
                    assert torch.equal(ours[name], expected), name
                else:
                    scale = float(expected.float().abs().max())
                    assert torch.allclose(ours[name].float(), expected.float(), atol=0.02 * scale), name
        # a sibling called with another input than the one its siblings were computed for, or on its
        # own, or twice: computed for its input, nothing stale handed out
        x = torch.randn(1, 1, hidden, dtype=torch.bfloat16)
        attention = fast.model.layers[1].self_attn
        expected = slow.model.layers[1].self_attn.v_proj(x)
        attention.q_proj(torch.randn(1, 1, hidden, dtype=torch.bfloat16))  # k and v now wait for that input
        assert torch.equal(attention.v_proj(x), expected)
        assert torch.equal(attention.v_proj(x), expected)


def test_lora_rows_on_fused_siblings_match_the_unfused_model(
    tiny_gptq_dir: Path, tiny_model_dir: Path, make_lora_adapter
) -> None:
    """The LoRA bank's hooks see each sibling's own output: the same logits per row with and without
    the fast paths, a row with an adapter and a row without in one batch."""
    from adapters.model import load_base_model, module_shapes
    from adapters.serving import LoraBank, check_adapter_dir, read_adapter

    path = make_lora_adapter(tiny_model_dir, seed=3)
    logits = []
    for fast in (True, False):
        model, tokenizer = load_base_model(tiny_gptq_dir, device="cpu", dtype="bfloat16")
        if fast:
            _fastpath.install(model)
        ids = tokenizer(["Mochi sneezes"] * 2, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            plain = model(input_ids=ids).logits
            bank = LoraBank(model)
            bank.add(
                "a", read_adapter(path, check_adapter_dir(path, module_shapes(model), str(tiny_gptq_dir)))
            )
            bank.use([("a",), ()])
            logits.append(model(input_ids=ids).logits.float())
            bank.remove("a")  # unloaded: the model is its plain self again
            assert torch.equal(model(input_ids=ids).logits, plain)
    ours, theirs = logits
    assert not torch.allclose(theirs[0], theirs[1], atol=1e-2)  # the adapter changes its row
    spread = float(theirs.std())
    assert float((ours - theirs).abs().max()) < 0.1 * spread


def test_int8_logits_follow_the_full_output_projection(tiny_gptq_dir: Path) -> None:
    from adapters.model import load_base_model

    model, _ = load_base_model(tiny_gptq_dir, device="cpu", dtype="bfloat16")
    head = model.get_output_embeddings()
    torch.manual_seed(0)
    x = torch.randn(2, 5, head.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        full = head(x).float()
        assert _fastpath.add_int8_output(model, threads=1)
        ours = head(x).float()
    assert ours.shape == full.shape
    scale = float(full.abs().max())
    assert float((ours - full).abs().max()) < 0.02 * scale
    assert float((ours - full).abs().max()) > 0  # it is the int8 path that answered


def test_an_act_order_checkpoint_keeps_dense_weights_for_prompts(tiny_act_order_gptq_dir: Path) -> None:
    """Layers whose input columns are permuted (desc_act) cannot be fused or called directly: they keep
    gptqmodel's kernel for decode steps and dense weights for prompts, as before."""
    from adapters.model import load_base_model

    model, _ = load_base_model(tiny_act_order_gptq_dir, device="cpu", dtype="bfloat16")
    served = _fastpath.serve_quantized_layers(model, min_rows=16)
    assert served["dense_prompt_layers"] == 14
    layer = model.model.layers[0].mlp.down_proj
    assert not hasattr(layer.forward, "linears") and layer.forward.dense_weight.shape == (
        layer.out_features,
        layer.in_features,
    )
    torch.manual_seed(2)
    x = torch.randn(20, layer.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        dense = layer(x)
        kernel = torch.cat([layer(row[None]) for row in x])
    assert torch.allclose(dense.float(), kernel.float(), atol=0.02 * float(kernel.float().abs().max()))
