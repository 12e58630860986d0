"""Serving: answering requests with the base model and the adapters each request chose.

What others import is here; the parts behind it, from a request to a token:

- :mod:`~adapters.serving._choice`: :class:`AdapterChoice`, which adapters answer a request (:data:`ACTIVE`,
  :data:`BASE`), and a :data:`Route`, what of a choice answers one question
- :mod:`~adapters.serving._routing`: :class:`QuestionRouting`, which questions an adapter's scope covers
- :mod:`~adapters.serving._swap`: hot swap, and :class:`ServedAdapters`, which version each guild or
  member is served and what stays loaded
- :mod:`~adapters.serving._base`, :mod:`~adapters.serving._runtime`, :mod:`~adapters.serving._remote`:
  the :class:`Runtime` protocol, the in-process :class:`ModelRuntime`, the vLLM :class:`RemoteRuntime`
- :mod:`~adapters.serving._engine`: continuous batching on one worker thread, where a step happens
  (:mod:`~adapters.serving._requests`: a request, its :class:`Generation`, the priorities)
- :mod:`~adapters.serving._decode`, :mod:`~adapters.serving._fastpath`, :mod:`~adapters.serving._native`
  (``csrc/``): a decode step written out, the CPU fast paths, the native kernels
- :mod:`~adapters.serving._cache`, :mod:`~adapters.serving._lora`, :mod:`~adapters.serving._streaming`:
  the growing KV cache, the per-row LoRA bank, stop strings and token choice
"""

from typing import Any

from adapters.serving._base import Runtime
from adapters.serving._choice import ACTIVE, BASE, AdapterChoice, Route, unrouted
from adapters.serving._decode import LlamaDecode
from adapters.serving._fastpath import DENSE_MIN_ROWS
from adapters.serving._fastpath import install as install_fast_paths
from adapters.serving._lora import LoraBank, check_adapter_dir, read_adapter
from adapters.serving._native import build_dir as native_kernels_dir
from adapters.serving._native import load as load_native_kernels
from adapters.serving._remote import RemoteRuntime
from adapters.serving._requests import BACKGROUND, INTERACTIVE, Generation, RuntimeBusy
from adapters.serving._routing import DEFAULT_MIN_SIMILARITY, About, QuestionRouting, routed
from adapters.serving._runtime import ModelRuntime
from adapters.serving._swap import (
    KEEP_LOADED,
    ServedAdapters,
    ensure_loaded,
    served_name,
    swap_to,
    sync_with_registry,
)

__all__ = [
    "ACTIVE",
    "BACKGROUND",
    "BASE",
    "DEFAULT_MIN_SIMILARITY",
    "DENSE_MIN_ROWS",
    "INTERACTIVE",
    "KEEP_LOADED",
    "About",
    "AdapterChoice",
    "Generation",
    "LlamaDecode",
    "LoraBank",
    "ModelRuntime",
    "QuestionRouting",
    "RemoteRuntime",
    "Route",
    "Runtime",
    "RuntimeBusy",
    "ServedAdapters",
    "check_adapter_dir",
    "ensure_loaded",
    "growing_cache",
    "install_fast_paths",
    "load_native_kernels",
    "native_kernels_dir",
    "read_adapter",
    "routed",
    "served_name",
    "swap_to",
    "sync_with_registry",
    "unrouted",
]


def growing_cache(config: Any) -> Any:
    """The engine's key/value cache for a model of ``config`` (:mod:`adapters.serving._cache`; it
    imports transformers, so only when called)."""
    from adapters.serving._cache import growing_cache as build

    return build(config)
