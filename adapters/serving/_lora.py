"""LoRA adapters applied per row: one forward serves a batch whose rows use different adapters.

peft applies the active adapter to the whole batch, and its per-row ``adapter_names`` does not
reach GPTQ layers (docs/PLATFORM_NOTES.md, "Batching with several adapters"). This bank holds every
loaded adapter's matrices and adds each row's LoRA delta itself, through forward hooks on the base
model's linear modules (or, for layers the serving fast paths multiply together, on their joint
output): ``y = base(x)`` once for the batch, then ``y[i] += scale * B_i(A_i(x[i]))``
with each row's own adapter, computed in fp32 as peft does (tested against peft's output per row).
A row may carry several adapters (their deltas add up: a member's adapter stacked on the guild's).
Before an adapter is read, :func:`check_adapter_dir` checks that its directory is whole and fits the base.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError
from adapters.registry import ADAPTER_CONFIG_FILE, WEIGHTS_FILE

_KEY = re.compile(r"^(?:base_model\.model\.)?(.*)\.(lora_[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class _Delta:
    a: Any  # [r, in]
    b: Any  # [out, r]
    scale: float


def _scale(config: dict[str, Any], module: str) -> float:
    """peft's scaling of ``module``: alpha / r (alpha / sqrt(r) with rsLoRA), per-module patterns applied."""
    rank = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", rank))
    for pattern, value in (config.get("rank_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            rank = int(value)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = float(value)
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


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

    tensors = load_file(str(path / WEIGHTS_FILE))
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
        deltas[module] = _Delta(
            pair["lora_A"].contiguous(), pair["lora_B"].contiguous(), _scale(config, module)
        )
    if not deltas:
        raise AdapterError(f"Adapter {path} holds no LoRA matrices: retrain or restore it.")
    return deltas


class LoraBank:
    """The adapters a model serves, applied by forward hooks to the rows that asked for them.

    For each hooked module the adapters' matrices are stacked, padded to the largest rank, with the
    scale folded into B and slot 0 all zeros (the base model): a batch of rows with different adapters
    costs two batched matmuls per module, whatever the mix (measured 2x cheaper than a pass per
    adapter over its rows). Call :meth:`use` before each forward with the rows' adapters; everything
    runs on the runtime's worker thread (load and unload between forwards)."""

    def __init__(self, model: Any):
        self._modules = dict(model.named_modules())
        self._device = next(model.parameters()).device
        self._adapters: dict[str, dict[str, _Delta]] = {}
        self._hooks: dict[str, Any] = {}
        # module or group -> (A^T [slots, in, r], (scale * B)^T [slots, r, out]); slot 0: the base (zeros)
        self._stacks: dict[str, tuple[Any, Any]] = {}
        self._groups: dict[int, Any] = {}  # the fast paths' layer groups given a delta (by id)
        self._plan: list[Any] = []  # per stacked adapter: one slot (every row alike) or a slot per row

    def add(self, name: str, deltas: dict[str, _Delta]) -> None:
        missing = [m for m in deltas if m not in self._modules]
        if missing:
            raise AdapterError(f"Adapter {name} targets layers this model lacks ({missing[0]}, ...).")
        self._adapters[name] = deltas
        self._restack()

    def remove(self, name: str) -> None:
        self._adapters.pop(name, None)
        self._restack()

    def _restack(self) -> None:
        names = list(self._adapters)
        targeted = {m for deltas in self._adapters.values() for m in deltas}
        # Layers the serving fast paths multiply together (adapters/serving/_fastpath.py) get one delta for
        # the group, added to their joint output: two matmuls for q/k/v instead of two each, no hooks.
        name_of = {id(module): name for name, module in self._modules.items()}
        groups = {
            id(linears): linears
            for m in targeted
            if (linears := getattr(self._modules[m].forward, "linears", None)) is not None
        }
        grouped = {name_of[id(layer)] for linears in groups.values() for layer in linears.layers}
        for module in [m for m in self._hooks if m not in targeted - grouped]:
            self._hooks.pop(module).remove()
        for linears in self._groups.values():
            linears.lora = None
        self._stacks, self._groups = {}, groups
        for key, linears in groups.items():
            members = [name_of[id(layer)] for layer in linears.layers]
            self._stacks[f"group:{key}"] = self._stack(names, members, linears.sizes)
            linears.lora = self._apply(f"group:{key}")
        for module in targeted - grouped:
            out_features = next(d.b.shape[0] for n in names if (d := self._adapters[n].get(module)))
            self._stacks[module] = self._stack(names, [module], [out_features])
            if module not in self._hooks:
                apply = self._apply(module)
                self._hooks[module] = self._modules[module].register_forward_hook(
                    lambda _layer, args, output, apply=apply: apply(args[0], output)
                )

    def _stack(self, names: list[str], members: list[str], sizes: list[int]) -> tuple[Any, Any]:
        """(A^T [slots, in, members x rank], (scale * B)^T [slots, members x rank, sum of sizes]) of
        ``members`` (layers reading the same input, outputs side by side), slot 0 all zeros (the base).
        B is block-diagonal: member i's rank columns feed only member i's outputs."""
        import torch

        present = [self._adapters[n].get(m) for n in names for m in members]
        first = next(d for d in present if d is not None)
        rank = max(d.a.shape[0] for d in present if d is not None)
        a_t = torch.zeros(len(names) + 1, first.a.shape[1], rank * len(members), device=self._device)
        b_t = torch.zeros(len(names) + 1, rank * len(members), sum(sizes), device=self._device)
        for slot, name in enumerate(names, start=1):
            start = 0
            for i, (member, size) in enumerate(zip(members, sizes, strict=True)):
                delta = self._adapters[name].get(member)
                if delta is not None:
                    r, col = delta.a.shape[0], i * rank
                    a_t[slot, :, col : col + r] = delta.a.float().T
                    b_t[slot, col : col + r, start : start + size] = (delta.b.float() * delta.scale).T
                start += size
        return a_t, b_t

    def use(self, rows: Sequence[Sequence[str]]) -> None:
        """Set the next forward's rows: ``rows[i]`` names the adapters of row ``i`` (may be empty)."""
        import torch

        slot_of = {name: slot for slot, name in enumerate(self._adapters, start=1)}
        plan: list[Any] = []
        for depth in range(max((len(row) for row in rows), default=0)):
            slots = [slot_of[row[depth]] if depth < len(row) else 0 for row in rows]
            plan.append(
                slots[0]
                if len(set(slots)) == 1
                else torch.tensor(slots, dtype=torch.long, device=self._device)
            )
        self._plan = plan

    def _apply(self, key: str) -> Any:
        """``(x, output) -> output`` plus each row's deltas for the stack ``key`` (computed in fp32)."""

        def apply(x: Any, output: Any) -> Any:
            if not self._plan:
                return output
            import torch

            a_t, b_t = self._stacks[key]
            x = x.float()
            total = output.float()
            for slots in self._plan:
                if isinstance(slots, int):
                    total = total + (x @ a_t[slots]) @ b_t[slots]
                else:
                    total = total + torch.bmm(
                        torch.bmm(x, a_t.index_select(0, slots)), b_t.index_select(0, slots)
                    )
            return total.to(output.dtype)

        # for the native decode step (adapters/serving/_fastpath.py), which adds the deltas itself
        apply.in_use = lambda: bool(self._plan)  # type: ignore[attr-defined]  # any row with an adapter
        apply.stack = lambda: self._stacks[key]  # type: ignore[attr-defined]
        apply.slots = self.slots  # type: ignore[attr-defined]
        return apply

    def slots(self, rows: int) -> Any:
        """The next forward's adapter slots ``(depth, rows)``: row ``i``'s adapters, 0 where none."""
        import torch

        return torch.stack(
            [
                torch.full((rows,), slots, dtype=torch.long) if isinstance(slots, int) else slots.cpu()
                for slots in self._plan
            ]
        )


def check_adapter_dir(path: Path, shapes: dict[str, tuple[int, int]], base_name: str) -> dict[str, Any]:
    """Validate a LoRA adapter directory against the loaded base; return its adapter_config.

    ``shapes`` is :func:`adapters.model.module_shapes` of the base model before any adapter was attached.
    Raises AdapterError when the directory is missing, its files are unreadable, or its LoRA
    matrices do not fit the base model's layers (an adapter trained for another base).
    """
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(
            f"Adapter directory {path} does not exist: check the path or the adapter registry."
        )
    config_file = path / ADAPTER_CONFIG_FILE
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        raise AdapterError(
            f"Adapter {path} is corrupt: cannot read adapter_config.json ({error}). Retrain or restore it."
        ) from None
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterError(
            f"Adapter {path} is corrupt: adapter_model.safetensors is missing. Retrain or restore it."
        )
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            tensors = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises several types for a damaged file
        raise AdapterError(
            f"Adapter {path} is corrupt: cannot read adapter_model.safetensors ({error}). Retrain or restore it."
        ) from None
    trained_for = config.get("base_model_name_or_path") or "an unknown base"
    for key, shape in tensors.items():
        match = re.match(r"^(?:base_model\.model\.)?(.*)\.(lora_[AB])(?:\.[^.]+)?\.weight$", key)
        if not match or len(shape) != 2:
            continue
        module, kind = match.groups()
        expected = shapes.get(module)
        fits = expected is not None and (
            shape[1] == expected[0] if kind == "lora_A" else shape[0] == expected[1]
        )
        if not fits:
            raise AdapterError(
                f"Adapter {path} was trained for a different base model ({trained_for}): its layer {module} "
                f"does not fit {base_name}. Train an adapter for this base or change LOOPBOT_MODEL_BASE."
            )
    return config
