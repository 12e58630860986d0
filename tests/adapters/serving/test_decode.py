"""The decode step written out (adapters/serving/_decode.py) and the native kernels it calls: the same
logits as the model's own forward, on one thread or split, and a fallback without a compiler."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from adapters.serving import _decode, _fastpath

MODULE = SimpleNamespace(training=False, num_key_value_groups=3, is_causal=True)


@pytest.mark.parametrize(
    "native,adapters,threads,integer",
    [
        (False, [("a",), ()], 1, False),
        (True, [("a",), ()], 1, False),
        (True, [("a",), ("a", "b")], 2, False),
        (True, [(), ()], 1, False),
        (True, [(), ()], 2, False),
        (True, [("a",), ()], 1, True),
        (True, [("a",), ("a", "b")], 2, True),
    ],
    ids=[
        "python",
        "native-lora-1-thread",
        "native-stacked-lora-2-threads",
        "native-1-thread",
        "native-2-threads",
        "native-int16-lora-1-thread",
        "native-int16-stacked-lora-2-threads",
    ],
)
def test_the_written_out_decode_step_gives_the_models_logits(
    tiny_gptq_dir: Path,
    tiny_model_dir: Path,
    make_lora_adapter,
    native: bool,
    adapters: list,
    threads: int,
    integer: bool,
) -> None:
    """Rows of different lengths (one left-padded) with an adapter, two stacked, or none: the decode
    step written out (LlamaDecode), in Python or with the native kernels (every layer in one call, on
    one thread or split across two, LoRA deltas added there, the projections through torch's int4
    kernel or with int16 activations), gives the logits of the model's own forward, step after step."""
    from adapters.model import load_base_model, module_shapes
    from adapters.serving import LoraBank, check_adapter_dir, read_adapter
    from adapters.serving._cache import growing_cache

    model, tokenizer = load_base_model(tiny_gptq_dir, device="cpu", dtype="bfloat16")
    _fastpath.install(model)
    decode = _decode.LlamaDecode.for_model(model, native=native)
    assert decode is not None and decode.native is native
    decode.threads = threads
    if native:
        decode.integer_rows = 16 if integer else 0
        assert decode.integer_rows == (16 if integer else 0)
    bank = LoraBank(model)
    for name, seed in (("a", 4), ("b", 5)):
        path = make_lora_adapter(tiny_model_dir, seed=seed)
        bank.add(name, read_adapter(path, check_adapter_dir(path, module_shapes(model), str(tiny_gptq_dir))))
    bank.use(adapters)
    assert model.model.layers[0].self_attn.q_proj.forward.linears.lora.in_use() is any(adapters)
    ids = tokenizer(["Mochi sneezes in the morning", "Luna eats"], return_tensors="pt", padding=True)
    ids, mask = ids["input_ids"], ids["attention_mask"]
    if bool(mask.all()):  # left-pad the shorter row by hand when the tokenizer pads right or not at all
        ids = torch.cat([torch.zeros(2, 3, dtype=ids.dtype), ids], 1)
        mask = torch.cat([torch.tensor([[1, 1, 1], [0, 0, 0]]), mask], 1)
    results = []
    with torch.inference_mode():
        for written_out in (True, False):
            cache = growing_cache(model.config)
            step_mask = mask.clone()
            positions = (step_mask.cumsum(-1) - 1).clamp(min=0)
            out = model(
                input_ids=ids, attention_mask=step_mask, position_ids=positions, use_cache=True, cache=cache
            )
            tokens = out.logits[:, -1].argmax(-1, keepdim=True)
            logits = []
            for _ in range(6):
                step_mask = torch.cat([step_mask, step_mask.new_ones(2, 1)], 1)
                positions = step_mask.sum(-1, keepdim=True) - 1
                if written_out:
                    step = decode(tokens, positions, step_mask, cache)
                else:
                    step = model(
                        input_ids=tokens,
                        attention_mask=step_mask,
                        position_ids=positions,
                        use_cache=True,
                        cache=cache,
                    ).logits[:, -1]
                logits.append(step.float())
                tokens = step.argmax(-1, keepdim=True)
            results.append(torch.stack(logits))
    # int16 activations sum in another order and round once per block: a bf16 ulp or two of the logits
    tolerance = 0.02 if integer else 1e-3
    torch.testing.assert_close(results[0], results[1], atol=tolerance, rtol=tolerance)


def test_integer_activations_multiply_like_torchs_int4_kernel(tiny_gptq_dir: Path) -> None:
    """The int4 weights laid out for integer activations (csrc/int4_matmul.h), for row counts that
    fill and do not fill a tile of 4: int16 activations give torch's int4 kernel's products to its
    bf16 rounding, int8 ones to ~1 %."""
    from adapters.model import load_base_model

    ops = _native_ops()
    model, _ = load_base_model(tiny_gptq_dir, device="cpu", dtype="bfloat16")
    _fastpath.install(model)
    torch.manual_seed(3)
    for layer in (model.model.layers[0].self_attn.q_proj, model.model.layers[1].mlp.down_proj):
        group = layer.forward.linears  # q/k/v together; down alone
        laid = ops.int4_layout(group.packed, group.scales, group.group_size)  # type: ignore[attr-defined]
        for dense in (group.dense.bfloat16(), group.dense.float()):  # the integers from the dense weight
            again = ops.int4_layout(dense, group.scales, group.group_size)  # type: ignore[attr-defined]
            assert all(torch.equal(a, b) for a, b in zip(laid, again, strict=True))
        for rows in (1, 3, 8):
            x = torch.randn(rows, group.in_features, dtype=torch.bfloat16)
            theirs = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x, group.packed, group.group_size, group.scales
            )
            for bits, tolerance in ((16, 0.004), (8, 0.03)):
                ours = ops.int4_mm(x, *laid, bits)  # type: ignore[attr-defined]
                assert ours.dtype == torch.bfloat16 and ours.shape == theirs.shape
                error = float((ours.float() - theirs.float()).norm() / theirs.float().norm())
                assert error < tolerance, (bits, rows, error)
    with pytest.raises(RuntimeError, match="8 or 16 bits"):
        ops.int4_mm(x, *laid, 4)  # type: ignore[attr-defined]


def test_only_a_llama_served_by_the_fast_paths_decodes_written_out(tiny_gptq_dir: Path) -> None:
    from adapters.model import load_base_model

    model, _ = load_base_model(tiny_gptq_dir, device="cpu", dtype="bfloat16")
    assert _decode.LlamaDecode.for_model(model) is None  # fast paths not installed
    _fastpath.install(model)
    assert _decode.LlamaDecode.for_model(model) is not None
    model.config.model_type = "mistral"
    assert _decode.LlamaDecode.for_model(model) is None


def _native_ops() -> object:
    from adapters.serving import _native

    assert _native.load() is None  # CI has a compiler: the kernels must build
    return torch.ops.loopbot


def test_native_norm_and_gate_round_as_the_model_does() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ops = _native_ops()
    torch.manual_seed(0)
    h = (torch.randn(3, 1, 576) * 4).bfloat16()
    norm = LlamaRMSNorm(576, eps=1e-5)
    norm.weight.data = (torch.rand(576) + 0.5).bfloat16()
    assert torch.equal(ops.norm(h, norm.weight, 1e-5), norm(h))
    gate_up = (torch.randn(3, 1, 2 * 96) * 3).bfloat16()
    expected = torch.nn.functional.silu(gate_up[..., :96]) * gate_up[..., 96:]
    assert torch.equal(ops.silu_mul(gate_up), expected)


def test_native_attention_writes_the_step_into_the_cache_and_attends_like_python() -> None:
    """One decode step's attention from fused q/k/v: the rotated key and the value land in the cache
    buffer at ``length`` (the rest untouched), and the output is the Python step's (rotary embedding,
    grouped queries, a left-padded row masked) to bf16 rounding."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    ops = _native_ops()
    rows, heads, kv, dim, length = 3, 9, 3, 64, 40
    torch.manual_seed(1)
    qkv = (torch.randn(rows, (heads + 2 * kv) * dim) * 2).bfloat16()
    keys = torch.randn(rows, kv, length + 10, dim).bfloat16()
    values = torch.randn(rows, kv, length + 10, dim).bfloat16()
    before_k, before_v = keys.clone(), values.clone()
    angles = (torch.arange(rows)[:, None, None] + length) / (10000 ** (torch.arange(0, dim, 2) / dim))
    emb = torch.cat([angles, angles], -1).float()
    cos, sin = emb.cos().bfloat16(), emb.sin().bfloat16()
    keep = torch.ones(rows, length + 1, dtype=torch.bool)
    keep[1, :5] = False
    q, k, v = (
        t.view(rows, 1, -1, dim).transpose(1, 2) for t in qkv.split([heads * dim, kv * dim, kv * dim], -1)
    )
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    all_k = torch.cat([before_k[:, :, :length], k], 2)
    all_v = torch.cat([before_v[:, :, :length], v], 2)
    expected, _ = _fastpath.decode_attention(
        MODULE, q, all_k, all_v, keep[:, None, None, :], scaling=dim**-0.5
    )
    out = ops.attend(qkv, keys, values, length, cos, sin, keep, heads, kv, dim**-0.5)
    assert torch.equal(keys[:, :, length], k[:, :, 0]) and torch.equal(values[:, :, length], v[:, :, 0])
    assert torch.equal(keys[:, :, :length], before_k[:, :, :length])
    assert torch.equal(keys[:, :, length + 1 :], before_k[:, :, length + 1 :])
    expected = expected.reshape(rows, -1).float()
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)
    # the masked keys count: unmasking row 1 changes its output
    again = ops.attend(qkv, keys, values, length, cos, sin, None, heads, kv, dim**-0.5)
    assert not torch.allclose(again[1].float(), out[1].float(), atol=1e-3)
    assert torch.equal(again[0], out[0])


def test_a_split_decode_step_falls_back_to_one_thread_when_a_probe_is_faster() -> None:
    """Probe steps run the other way: once a batch's baseline is known, when a split step slows down
    suddenly, and periodically; two probes in a row clearly faster than the median of the steps before
    them (same rows) flip the choice; one slow step does not."""
    choice = _decode.SplitChoice(2)
    timing = {"split_ms": 4.0, "one_ms": 5.0, "rows": 4}

    def steps(count: int) -> list[int]:
        used = []
        for _ in range(count):
            threads = choice.threads()
            used.append(threads)
            ms = timing["split_ms"] if threads == 2 else timing["one_ms"]
            choice.record(int(timing["rows"]), ms / 1000)
        return used

    assert steps(5) == [2, 2, 2, 1, 2] and choice.split  # idle: the early probe loses
    assert steps(_decode.SplitChoice.SPLIT_CHECK).count(1) == 1 and choice.split  # one periodic probe
    timing.update(split_ms=12.0)
    steps(1)  # one slow split step: a probe, which wins once against the median, not twice
    timing.update(split_ms=4.0)
    assert steps(4) == [1, 2, 2, 2] and choice.split
    timing.update(split_ms=40.0, one_ms=8.0)  # a retrain starts
    # slow steps trigger probes, which win once the median has followed, twice: one thread
    assert steps(7) == [2, 1, 2, 1, 2, 1, 1] and not choice.split
    used = steps(_decode.SplitChoice.ONE_CHECK)
    assert used.count(2) == 1 and not choice.split  # a rare split probe, which loses
    timing.update(split_ms=4.0)  # the retrain ended
    used = steps(2 * _decode.SplitChoice.ONE_CHECK)
    assert used.count(2) >= 2 and choice.split  # split probes win twice
    timing.update(rows=5, one_ms=1.0)
    assert steps(3) == [2, 2, 2] and choice.split  # another batch: no probe before its baseline
    assert _decode.SplitChoice(1).threads() == 1


def test_two_decoders_stepping_at_once_share_the_helper_threads_safely(tiny_gptq_dir: Path) -> None:
    """Two runtimes in one process (the bot's and a gate's) decode at the same time: the step that
    finds the helper threads busy runs on one thread; both get the logits they get alone."""
    import threading

    from adapters.model import load_base_model
    from adapters.serving._cache import growing_cache

    decoders = []
    for _ in range(2):
        model, tokenizer = load_base_model(tiny_gptq_dir, device="cpu", dtype="bfloat16")
        _fastpath.install(model)
        decode = _decode.LlamaDecode.for_model(model)
        assert decode is not None and decode.native
        decode.threads = 2
        decode.split.threads = lambda: 2  # type: ignore[method-assign]  # always ask for the helpers
        decoders.append(decode)
    ids = tokenizer(["Mochi sneezes in the morning"] * 3, return_tensors="pt")["input_ids"]

    def run(decode: _decode.LlamaDecode, out: list[torch.Tensor]) -> None:
        with torch.inference_mode():
            for _ in range(20):
                cache = growing_cache(decode.model.config)
                logits = decode.model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1]
                mask = torch.ones(ids.shape, dtype=torch.long)
                steps = []
                for step in range(8):
                    mask = torch.cat([mask, mask.new_ones(3, 1)], 1)
                    position = torch.full((3, 1), ids.shape[1] + step)
                    logits = decode(logits.argmax(-1, keepdim=True), position, mask, cache)
                    steps.append(logits.float())
                out.append(torch.stack(steps))

    alone: list[torch.Tensor] = []
    run(decoders[0], alone)
    together: list[list[torch.Tensor]] = [[], []]
    threads = [
        threading.Thread(target=run, args=(d, o), daemon=True)
        for d, o in zip(decoders, together, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    for out in together:
        assert len(out) == 20
        for logits in out:
            torch.testing.assert_close(logits, alone[0], atol=1e-3, rtol=1e-3)


def test_without_a_compiler_the_runtime_says_so_and_answers_through_python(
    tiny_gptq_dir: Path, tmp_path: Path
) -> None:
    """A machine without a working C++ compiler (here: ``CXX=false``, an empty build cache): the
    kernels cannot be built, the runtime serves the Python decode step, says why, and still answers."""
    import json
    import os
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from adapters.serving import ModelRuntime\n"
        "with ModelRuntime.load(sys.argv[1], device='cpu', dtype='bfloat16') as rt:\n"
        "    answer = rt.generate([{'role': 'user', 'content': 'Hi'}], max_new_tokens=3)\n"
        "    print(json.dumps({'step': rt.info()['fast_paths']['decode_step'], 'tokens': answer.completion_tokens}))\n"
    )
    env = {**os.environ, "CXX": "false", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tiny_gptq_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["step"].startswith("written out in Python (native kernels: build failed")
    assert result["tokens"] > 0
    assert "Install a C++ compiler (g++)" in done.stderr
