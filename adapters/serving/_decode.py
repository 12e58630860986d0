"""A decode step of a Llama model written out (:class:`LlamaDecode`): the model's operations without
transformers' per-module machinery, one row 88.9 -> 108.3 tok/s (with the growing cache); with the
native kernels (:mod:`adapters.serving._native`) a whole step is one call, split across two threads
while that pays (:class:`SplitChoice`): one row 10.4 -> 4.2 ms a step, logits included. The engine
(:mod:`adapters.serving._engine`) calls it for every decode step once the runtime installed the fast
paths (:mod:`adapters.serving._fastpath`); prompts still run the model's forward.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any

from adapters.serving import _native
from adapters.serving._fastpath import ATTENTION, decode_attention

log = logging.getLogger(__name__)


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


# Row counts probed by :func:`integer_wins_up_to` (a decode step has up to max_batch rows, 8-16 by default).
INTEGER_PROBE_ROWS = (1, 2, 4, 8, 16, 32)
# The activations' width in decode steps: 16 bits stay within the bf16 path's rounding (divergence from
# the fp32 model: agreement 0.907, KL 0.088, as bf16's 0.905 / 0.088); 8 bits are 1.5x faster from
# several rows but raise the KL to 0.093 (bench/quantization_quality.py, Dec 8).
ACTIVATION_BITS = 16


def integer_wins_up_to(group: Any, laid: Sequence[Any], bits: int = ACTIVATION_BITS) -> int:
    """The most rows up to which integer activations x int4 weights (``csrc/int4_matmul.h``) multiply
    ``group``'s weights (``laid``: their bytes and params, from ``int4_layout``) faster than torch's
    int4 kernel, on one thread as a decode step's share runs (best of 5 calls each way per row count
    in :data:`INTEGER_PROBE_ROWS`; ~10 ms): 0 where torch's kernel wins from one row. On a Zen 3 core
    (AVX2, no AVX-512), int16 activations are 2.4x faster at one row and 1.5x at 4-16 (torch converts
    every weight to fp32 there); a host where torch's kernel is faster keeps it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    wins = 0
    try:
        with torch.inference_mode():
            for rows in INTEGER_PROBE_ROWS:
                x = torch.randn(rows, group.in_features, dtype=group.scales.dtype)
                ours = _best_of(5, torch.ops.loopbot.int4_mm, x, *laid, bits)
                torchs = _best_of(
                    5,
                    torch.ops.aten._weight_int4pack_mm_for_cpu,
                    x,
                    group.packed,
                    group.group_size,
                    group.scales,
                )
                if ours >= torchs:
                    break
                wins = rows
    finally:
        torch.set_num_threads(before)
    log.info("native decode steps of up to %d rows multiply with int%d activations", wins, bits)
    return wins


def _best_of(runs: int, call: Any, *args: Any) -> float:
    call(*args)  # warm-up
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        call(*args)
        best = min(best, time.perf_counter() - started)
    return best


class LlamaDecode:
    """One decode step (one new token per row) of a Llama model served with the fast paths, written out
    instead of run through transformers' modules: the same operations in the same order (logits equal
    to the model's own forward, tested), without the per-module calls, wrappers and mask building that
    cost ~2 ms of an ~11 ms one-row step (bench/decode_overhead.py). Prompts still run the model's
    forward. :meth:`for_model` says whether a model can be served this way.

    With the native kernels (:mod:`adapters.serving._native`, a bf16 model, the engine's growing cache) every
    layer of a step is one native call, split across :attr:`threads` threads, each row's LoRA deltas
    added there from the LoRA bank's stacks; logits agree with the Python step to rounding."""

    def __init__(self, model: Any, native: bool = True, integer: bool = True):
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
        self._integer_rows = 0
        if self._handle is not None and integer and self._groups[0][0].group_size % 32 == 0:
            laid = self._attach_layouts()
            self.integer_rows = integer_wins_up_to(self._groups[0][2], laid[4:6])  # layer 0's gate/up

    @property
    def integer_rows(self) -> int:
        """Native steps of up to this many rows multiply with integer activations of
        :data:`ACTIVATION_BITS` (0: never, bf16 activations): chosen by :func:`integer_wins_up_to` at
        load; tests and benchmarks set it."""
        return self._integer_rows

    @integer_rows.setter
    def integer_rows(self, rows: int) -> None:
        self.set_integer_rows(rows, ACTIVATION_BITS)

    def set_integer_rows(self, rows: int, bits: int) -> None:
        import torch

        if self._handle is not None:
            self._integer_rows = int(torch.ops.loopbot.set_integer_rows(self._handle, rows, bits))

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

    def _attach_layouts(self) -> list[Any]:
        """The projections' int4 weights laid out for integer activations (csrc/int4_matmul.h), from
        their dense weights (0.2 s for the default model); returns them, 8 tensors a layer."""
        import torch

        laid = []
        for groups in self._groups:
            for group in groups:
                laid += torch.ops.loopbot.int4_layout(group.dense, group.scales, group.group_size)
        torch.ops.loopbot.attach_layouts(self._handle, laid)
        return laid

    @classmethod
    def for_model(cls, model: Any, native: bool = True, integer: bool = True) -> LlamaDecode | None:
        """A decoder for ``model``: a Llama whose every projection :class:`~adapters.serving._fastpath._Linears` serves, its
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
        return cls(model, native, integer) if inner is not None and len(inner.layers) else None

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
