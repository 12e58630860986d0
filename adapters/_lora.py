"""LoRA adapters applied per row: one forward serves a batch whose rows use different adapters.

peft applies the active adapter to the whole batch, and its per-row ``adapter_names`` does not
reach GPTQ layers (docs/PLATFORM_NOTES.md, "Batching with several adapters"). This bank holds every
loaded adapter's matrices and adds each row's LoRA delta itself, through forward hooks on the base
model's linear modules: ``y = base(x)`` once for the batch, then ``y[rows] += B(A(x[rows])) * scale``
for each adapter's rows, in the adapter's dtype as peft does (tested against peft's output).
A row may carry several adapters (their deltas add up: a member's adapter stacked on the guild's).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError

_KEY = re.compile(r"^(?:base_model\.model\.)?(.*)\.(lora_[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class _Delta:
    a: Any  # [r, in]
    b: Any  # [out, r]
    scale: float


def _scale(config: dict[str, Any], module: str) -> tuple[int, float]:
    rank = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", rank))
    for pattern, value in (config.get("rank_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            rank = int(value)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = float(value)
    return rank, alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def read_adapter(path: Path, config: dict[str, Any]) -> dict[str, _Delta]:
    """``{module path: delta}`` of a plain LoRA adapter directory (already checked to fit the base).

    AdapterError for what a delta cannot express: DoRA, trained biases, fully saved modules."""
    unsupported = [
        what
        for what, present in (
            ("DoRA", config.get("use_dora")),
            ("trained biases", config.get("bias", "none") != "none"),
            ("fully saved modules", config.get("modules_to_save")),
        )
        if present
    ]
    if unsupported:
        raise AdapterError(
            f"Adapter {path} uses {', '.join(unsupported)}, which loopbot's batched runtime cannot serve: "
            "retrain it with loopbot (plain LoRA)."
        )
    from safetensors.torch import load_file

    tensors = load_file(str(path / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match:
            module, kind = match.groups()
            pairs.setdefault(module, {})[kind] = tensor
    deltas = {}
    for module, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterError(
                f"Adapter {path} is corrupt: {module} lacks one of its two matrices. Retrain it."
            )
        _, scale = _scale(config, module)
        deltas[module] = _Delta(pair["lora_A"].contiguous(), pair["lora_B"].contiguous(), scale)
    if not deltas:
        raise AdapterError(f"Adapter {path} holds no LoRA matrices: retrain or restore it.")
    return deltas


class LoraBank:
    """The adapters a model serves, applied by forward hooks to the rows that asked for them.

    Call :meth:`use` before each forward with the rows' adapters; everything runs on the runtime's
    worker thread (load/unload between forwards)."""

    def __init__(self, model: Any):
        self._modules = dict(model.named_modules())
        self._adapters: dict[str, dict[str, _Delta]] = {}
        self._hooks: dict[str, Any] = {}
        self._plan: list[tuple[str, Any]] = []  # (adapter, row indices or None for every row)

    @property
    def names(self) -> list[str]:
        return list(self._adapters)

    def add(self, name: str, deltas: dict[str, _Delta]) -> None:
        missing = [m for m in deltas if m not in self._modules]
        if missing:
            raise AdapterError(f"Adapter {name} targets layers this model lacks ({missing[0]}, ...).")
        self._adapters[name] = deltas
        for module in deltas:
            if module not in self._hooks:
                self._hooks[module] = self._modules[module].register_forward_hook(self._hook(module))

    def remove(self, name: str) -> None:
        self._adapters.pop(name, None)
        used = {m for deltas in self._adapters.values() for m in deltas}
        for module in [m for m in self._hooks if m not in used]:
            self._hooks.pop(module).remove()

    def use(self, rows: Sequence[Sequence[str]]) -> None:
        """Set the next forward's rows: ``rows[i]`` names the adapters of row ``i`` (may be empty)."""
        import torch

        names = {name for row in rows for name in row}
        plan = []
        for name in sorted(names):
            members = [i for i, row in enumerate(rows) if name in row]
            indices = None if len(members) == len(rows) else torch.tensor(members, dtype=torch.long)
            plan.append((name, indices))
        self._plan = plan

    def _hook(self, module: str) -> Any:
        def apply(_layer: Any, args: tuple[Any, ...], output: Any) -> Any:
            for name, rows in self._plan:
                delta = self._adapters[name].get(module)
                if delta is None:
                    continue
                x = args[0] if rows is None else args[0].index_select(0, rows)
                change = (x.to(delta.a.dtype) @ delta.a.T) @ delta.b.T * delta.scale
                if rows is None:
                    output = (output.to(change.dtype) + change).to(output.dtype)
                else:
                    mixed = (output.index_select(0, rows).to(change.dtype) + change).to(output.dtype)
                    output = output.index_copy(0, rows, mixed)
            return output

        return apply
