"""CPU fast paths for serving, each chosen by measurement (``bench/serving.py``,
``bench/decode_overhead.py``, README "Serving").

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
- **Projections served directly, siblings together** (:class:`_Linears`). Below ``DENSE_MIN_ROWS``
  the int4 kernel is called without gptqmodel's per-call checks, and layers that read the same input
  (q/k/v, gate/up) are multiplied as one matrix: a block's seven projections 154 -> 122 us at one
  row, the same integers and the same bits out. Act-order layers (permuted input columns) keep
  gptqmodel's kernel and get only the dense weights.
- **int8 vocabulary logits** (:func:`add_int8_output`): the output projection, the largest single
  matmul of a decode step (3.0 ms of ~13 at one row), from int8 weights on every thread: 0.4-0.6 ms.
  Divergence from the fp32 model unchanged (agreement 0.902, KL 0.087 vs 0.087).
- **A decode step written out** (:class:`LlamaDecode`, Llama models): the model's operations without
  transformers' per-module machinery: one row 88.9 -> 108.3 tok/s (with the growing cache); with the
  native kernels (:mod:`adapters._native`) a whole step is one call, split across two threads while
  that pays (:class:`SplitChoice`): one row 10.4 -> 4.2 ms a step, logits included.

Only the serving runtime installs them (:func:`install`); training runs its own kernel.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any

from adapters import _native

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
                    dense = module.dequantize_weight().t().to(dtype).contiguous()  # (out, in)
                    module.forward = _dense_forward(module, module.forward, dense, min_rows)
                    served.add(id(module))
    return {"dense_prompt_layers": len(served), "fused_groups": fused}


def _dense_forward(module: Any, kernel_forward: Any, weight: Any, min_rows: int) -> Any:
    """gptqmodel's forward, or the dense weight for calls of ``min_rows`` rows or more."""
    import torch.nn.functional as F

    def forward(x: Any) -> Any:
        if x.numel() < min_rows * x.shape[-1] or x.dtype != weight.dtype or x.requires_grad:
            return kernel_forward(x)
        return F.linear(x, weight, module.bias)

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

        dense = [layer.dequantize_weight().t().to(dtype).contiguous() for layer in layers]  # (out, in)
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
        # ``(x, output) -> output`` with LoRA deltas added, set by the runtime's LoRA bank (adapters/_lora.py)
        self.lora: Any = None
        start = 0
        for index, (layer, size) in enumerate(zip(layers, self.sizes, strict=True)):
            layer.qweight = self.packed[start : start + size]  # a view: the layer's kernel still works
            layer.forward = self._forward(index, layer.forward, self.dense[start : start + size])
            start += size

    def multiply(self, x: Any) -> Any:
        """``x @ W.T`` for every layer at once (the outputs side by side)."""
        import torch
        import torch.nn.functional as F

        rows = x.numel() // self.in_features
        flat = x.reshape(rows, self.in_features)
        if rows >= self.min_rows:
            out = F.linear(flat, self.dense)
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


class SplitChoice:
    """Whether a native decode step is split across threads, kept right by measurement. Split, a step's
    threads meet at ~150 barriers, waiting for each other by spinning: 1.3-1.6x faster than one thread
    on an idle machine, but with a retrain's threads on the same cores a descheduled partner can hold
    every barrier up (bench/split_under_load.py).

    A probe step runs the other way; it wins when it is :data:`SWITCH_GAIN` faster than the median of
    the last :data:`BASELINE` steps (same rows: steps of one batch cost alike, and single slow steps
    happen), and two wins in a row flip the choice. While split, a probe (one step on one thread: it
    costs at most the split's gain) runs once a batch's baseline is known, after a step
    :data:`SLOWDOWN` times slower than the fastest recent one (the machine got busy: the median
    follows after three such steps) and every :data:`SPLIT_CHECK` steps; on one thread, a probe runs
    every :data:`ONE_CHECK` steps (a split step on a busy machine can cost ~10 one-thread steps)."""

    SWITCH_GAIN = 0.15
    SLOWDOWN = 1.5
    BASELINE = 5
    SPLIT_CHECK = 32
    ONE_CHECK = 128

    def __init__(self, most: int):
        self.most = most
        self.split = most > 1
        self._since = 0  # steps since the last probe
        self._probe_next = False
        self._probing = False
        self._wins = 0  # probes won in a row
        self._rows = 0
        self._recent: list[float] = []  # seconds of the last steps with ``_rows`` rows, not probes

    def threads(self) -> int:
        """Threads for the next step (then :meth:`record` its time)."""
        self._since += 1
        every = self.SPLIT_CHECK if self.split else self.ONE_CHECK
        self._probing = self.most > 1 and (self._probe_next or self._since >= every)
        if self._probing:
            self._since, self._probe_next = 0, False
        return self.most if self.split != self._probing else 1

    def record(self, rows: int, seconds: float) -> None:
        if rows != self._rows:  # another batch: a new baseline
            self._rows, self._recent, self._wins = rows, [], 0
        baseline = sorted(self._recent)[len(self._recent) // 2] if len(self._recent) >= 3 else None
        if self._probing:
            won = baseline is not None and seconds < baseline * (1 - self.SWITCH_GAIN)
            self._wins = self._wins + 1 if won else 0
            if self._wins >= 2:
                self.split, self._recent, self._wins = not self.split, [], 0
                log.info(
                    "native decode steps now %s", f"on {self.most} threads" if self.split else "on one thread"
                )
            elif won:
                self._probe_next = True  # confirm
            return
        # while split, a probe (cheap: one step on one thread) for each new batch and on a slowdown
        slowed = len(self._recent) >= 3 and seconds > min(self._recent) * self.SLOWDOWN
        self._recent = [*self._recent, seconds][-self.BASELINE :]
        if self.split and (len(self._recent) == 3 or slowed):
            self._probe_next = True


class LlamaDecode:
    """One decode step (one new token per row) of a Llama model served with the fast paths, written out
    instead of run through transformers' modules: the same operations in the same order (logits equal
    to the model's own forward, tested), without the per-module calls, wrappers and mask building that
    cost ~2 ms of an ~11 ms one-row step (bench/decode_overhead.py). Prompts still run the model's
    forward. :meth:`for_model` says whether a model can be served this way.

    With the native kernels (:mod:`adapters._native`, a bf16 model, the engine's growing cache) every
    layer of a step is one native call, split across :attr:`threads` threads, each row's LoRA deltas
    added there from the LoRA bank's stacks; logits agree with the Python step to rounding."""

    def __init__(self, model: Any, native: bool = True):
        import torch

        self.model = model
        self.inner = model.model
        self.layers = list(self.inner.layers[: model.config.num_hidden_layers])
        # each layer's projection groups (_Linears) in the native step's order: q/k/v, o, gate/up, down
        self._groups = [
            tuple(m.forward.linears for m in (a.q_proj, a.o_proj, p.gate_proj, p.down_proj))
            for a, p in ((layer.self_attn, layer.mlp) for layer in self.layers)
        ]
        self.native = native and model.dtype == torch.bfloat16 and _native.load() is None
        # the most threads a native step is split across (from one row on: bench/decode_overhead.py)
        self.threads = max(1, torch.get_num_threads())
        self.split = SplitChoice(self.threads)
        self._handle = self._register() if self.native else None
        if self._handle is not None:  # the kernels drop their references to the weights with this decoder
            weakref.finalize(self, torch.ops.loopbot.release_model, self._handle)

    def _register(self) -> int:
        """Hand the layers' weights to the native kernels once (views, no copies but the scales)."""
        import torch

        tensors = []
        for layer, (qkv, o, gate_up, down) in zip(self.layers, self._groups, strict=True):
            tensors += [layer.input_layernorm.weight, qkv.packed, qkv.scales, o.packed, o.scales]
            tensors += [layer.post_attention_layernorm.weight, gate_up.packed, gate_up.scales]
            tensors += [down.packed, down.scales]
        config, first = self.model.config, self.layers[0]
        return int(
            torch.ops.loopbot.register_model(
                [t.detach() for t in tensors],
                config.num_attention_heads,
                config.num_key_value_heads,
                first.self_attn.head_dim,
                self._groups[0][0].group_size,
                first.input_layernorm.variance_epsilon,
                first.self_attn.scaling,
                self.threads,
            )
        )

    @classmethod
    def for_model(cls, model: Any, native: bool = True) -> LlamaDecode | None:
        """A decoder for ``model``: a Llama whose every projection :class:`_Linears` serves, its
        attention ours (:func:`use_decode_attention`); None for anything else."""
        if (
            getattr(model.config, "model_type", None) != "llama"
            or model.config._attn_implementation != ATTENTION
        ):
            return None
        inner = getattr(model, "model", None)
        for layer in getattr(inner, "layers", []):
            attention, mlp = layer.self_attn, layer.mlp
            groups = [attention.q_proj, attention.o_proj, mlp.gate_proj, mlp.down_proj]
            if not all(hasattr(m.forward, "linears") for m in groups):
                return None
            if (
                len(attention.q_proj.forward.linears.sizes) != 3
                or len(mlp.gate_proj.forward.linears.sizes) != 2
            ):
                return None
        return cls(model, native) if inner is not None and len(inner.layers) else None

    def __call__(self, ids: Any, positions: Any, mask: Any, cache: Any) -> Any:
        """Logits ``(rows, vocabulary)`` of the next token after ``ids`` ``(rows, 1)`` at ``positions``
        ``(rows, 1)``; ``mask`` ``(rows, cache length + 1)`` is 0 on each row's padding; ``cache`` (one
        layer per decoder layer) gets the step's keys and values. The norms and the rotary embedding
        are the model's own code, called without the module machinery."""
        h = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(h, position_ids=positions)
        everything = bool(mask.all())
        if self.native and all(hasattr(layer, "room") for layer in cache.layers[: len(self.layers)]):
            h = self._native_layers(h, cos, sin, None if everything else mask.bool(), cache)
        else:
            h = self._python_layers(h, cos, sin, None if everything else mask.bool()[:, None, None, :], cache)
        return self.model.lm_head(self.inner.norm.forward(h))[:, -1, :]

    def _python_layers(self, h: Any, cos: Any, sin: Any, keep: Any, cache: Any) -> Any:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        rows = h.shape[0]
        for index, layer in enumerate(self.layers):
            attention, mlp = layer.self_attn, layer.mlp
            qkv = attention.q_proj.forward.linears
            q, k, v = qkv.multiply(layer.input_layernorm.forward(h)).split(qkv.sizes, dim=-1)
            dim = attention.head_dim
            q, k, v = (t.view(rows, 1, -1, dim).transpose(1, 2) for t in (q, k, v))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k, v = cache.layers[index].update(k, v)
            out, _ = decode_attention(attention, q, k, v, keep, scaling=attention.scaling)
            h = h + attention.o_proj.forward.linears.multiply(out.reshape(rows, 1, -1))
            gate_up = mlp.gate_proj.forward.linears
            gate, up = gate_up.multiply(layer.post_attention_layernorm.forward(h)).split(
                gate_up.sizes, dim=-1
            )
            h = h + mlp.down_proj.forward.linears.multiply(mlp.act_fn(gate) * up)
        return h

    def _native_layers(self, h: Any, cos: Any, sin: Any, keep: Any, cache: Any) -> Any:
        import torch

        layers = cache.layers[: len(self.layers)]
        rooms = [layer.room(1) for layer in layers]
        stacks: list[Any] = []
        slots = None
        # one LoRA bank serves every group: its plan says whether any row has an adapter this step
        lora = next((g.lora for groups in self._groups for g in groups if g.lora is not None), None)
        if lora is not None and lora.in_use():  # A^T and B^T stacks per group, the rows' slots
            for groups in self._groups:
                for group in groups:
                    stacks += list(group.lora.stack()) if group.lora is not None else [None, None]
            slots = lora.slots(h.shape[0])
        keys, values = [room[0] for room in rooms], [room[1] for room in rooms]
        self.split.most = self.threads
        threads = self.split.threads()
        started = time.perf_counter()
        h = torch.ops.loopbot.decode(
            h, self._handle, keys, values, rooms[0][2], cos, sin, keep, threads, stacks, slots
        )
        self.split.record(h.shape[0], time.perf_counter() - started)
        for layer in layers:
            layer.advance(1)
        return h


def install(model: Any) -> dict[str, Any]:
    """The fast paths on a loaded serving model; returns what was installed (for ``info()``)."""
    import torch

    use_decode_attention(model)
    linears = serve_quantized_layers(model)
    if linears["dense_prompt_layers"]:
        log.info("quantized layers served directly: %s", linears)
    return {"attention": ATTENTION, **linears, "int8_output": add_int8_output(model, torch.get_num_threads())}
