"""Loading a base model (GPTQ or plain): resolving where it is, reading its config, picking device,
kernel and dtype, and the shapes of its layers (what a LoRA adapter must fit)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError

PREPARE_HINT = "run `loopbot model prepare` (or set LOOPBOT_MODEL_BASE to a model directory)"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ).lower() in ("1", "true", "yes")


def resolve_base(base: str | Path) -> str:
    """A local directory path, or a hub id that can be loaded; AdapterError saying what to do otherwise."""
    text = str(base).strip()
    if not text:
        raise AdapterError(f"No base model is configured: {PREPARE_HINT}.")
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AdapterError(f"{path} is not a model directory (no config.json): {PREPARE_HINT}.")
        return str(path)
    if _HUB_ID.match(text) and not text.startswith((".", "~")):
        if _hub_offline():
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(text, "config.json")
            if not isinstance(cached, str):
                raise AdapterError(
                    f"{text} is not on this machine and the hub is offline: set LOOPBOT_MODEL_BASE to a "
                    "local path or run `loopbot model prepare`."
                )
        return text
    raise AdapterError(f"Model directory {path} does not exist: {PREPARE_HINT}.")


def read_model_config(base: str) -> dict[str, Any]:
    """config.json of a local directory or a cached/downloadable hub model."""
    if Path(base).is_dir():
        config_file = Path(base) / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        config_file = Path(hf_hub_download(base, "config.json"))
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AdapterError(f"Cannot read {config_file}: {error}. Re-create the model directory.") from None
    return data if isinstance(data, dict) else {}


def gptq_settings(config: dict[str, Any]) -> dict[str, Any] | None:
    """The GPTQ quantization block of a model config, or None for a plain checkpoint."""
    quant = config.get("quantization_config")
    method = quant.get("quant_method", "") if isinstance(quant, dict) else ""
    if isinstance(quant, dict) and str(getattr(method, "value", method)).lower() == "gptq":
        return quant
    return None


def pick_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise AdapterError("LOOPBOT_MODEL_DEVICE=cuda but no CUDA GPU is visible: use auto or cpu.")
    return device


def load_base_model(
    base: str | Path, *, device: str = "auto", backend: str = "auto", dtype: str = "auto"
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for a GPTQ or plain checkpoint (local path or hub id).

    ``backend`` picks gptqmodel's kernel for a GPTQ checkpoint: ``auto`` (fast inference),
    ``torch`` (the kernel LoRA training learns through, see docs/PLATFORM_NOTES.md, "Training"), or any gptqmodel backend
    name. ``dtype`` ``auto`` is fp16 on CUDA; on CPU bf16 for a GPTQ checkpoint served through the
    fast kernel (its dequantize-and-matmul path ran 14.6 tok/s in bf16 against 2.4 in fp32 on 2
    cores, same greedy output) and fp32 otherwise (plain checkpoints, and the ``torch`` training
    kernel, which learns in fp32). ``float32``, ``bfloat16`` or ``float16`` force one.
    """
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # gptqmodel refuses to start on 2 cores without it
    name = resolve_base(base)
    # gptqmodel logs its banner and kernel choice to stdout: keep stdout for the caller's output
    # (``loopbot ask --json`` must print JSON only).
    with contextlib.redirect_stdout(sys.stderr):
        loaded = _load(name, pick_device(device), backend, dtype)
    drop_stored_tracebacks()
    return loaded


def drop_stored_tracebacks() -> int:
    """Let go of the tracebacks that modules keep in their globals; returns how many.

    gptqmodel keeps the error of an optional kernel's failed import (``_LLAMA_CPP_IMPORT_ERROR``: no
    llama_cpp here) with its traceback. The first model load imports it, so that traceback reaches,
    frame by frame, every caller that was on the stack then, and keeps their locals alive once they
    return: the loaded model and the runtime built around it (0.6 GB a CLI could not give back before
    starting its training process, bench/first_run.py). The exceptions themselves stay."""
    dropped = 0
    seen: set[int] = set()
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            while isinstance(value, BaseException) and id(value) not in seen:  # a context chain may loop
                seen.add(id(value))
                if value.__traceback__ is not None:
                    value.__traceback__ = None
                    dropped += 1
                value = value.__context__
    return dropped


def _load(name: str, device: str, backend: str, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTQConfig

    config = read_model_config(name)
    quant = gptq_settings(config)
    if dtype == "auto":
        if device == "cuda":
            dtype = "float16"
        elif quant is not None and backend != "torch":
            dtype = "bfloat16"
        else:
            dtype = "float32"
    kwargs: dict[str, Any] = {"device_map": device, "dtype": getattr(torch, dtype)}
    if quant is not None:
        # auto on CPU: transformers' default picks a kernel peft can run through (TorchAtenLinear).
        chosen = "auto_trainable" if backend == "auto" and device == "cpu" else backend
        kwargs["quantization_config"] = GPTQConfig(bits=int(quant.get("bits", 4)), backend=chosen)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        with warnings.catch_warnings():
            # We pass a GPTQConfig only to choose the kernel; transformers warns that it merges it.
            warnings.filterwarnings("ignore", message=".*already has a `quantization_config`.*")
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise AdapterError(
            f"Cannot load the model {name}: {error}. Check the directory or {PREPARE_HINT}."
        ) from None
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def module_shapes(model: Any) -> dict[str, tuple[int, int]]:
    """``{module path: (in_features, out_features)}`` for every linear-like module of the base."""
    shapes = {}
    for name, module in model.named_modules():
        inp, out = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if isinstance(inp, int) and isinstance(out, int):
            shapes[name] = (inp, out)
    return shapes
