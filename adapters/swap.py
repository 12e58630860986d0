"""Hot swap: make a running :class:`~adapters.runtime.ModelRuntime` serve a registry version.

Adapters are loaded under their version name (``v0003``), never reloaded under one fixed name, so a
request already queued keeps the adapter it was submitted with (the runtime fixes the adapter per
job) and the switch is one pointer change. Old versions are unloaded only once they have been out
of use for a whole swap, so no queued request can lose its adapter.
"""

from __future__ import annotations

from typing import Any

from adapters.registry import AdapterRegistry, AdapterVersion

KEEP_LOADED = 2  # the active version and the one before it (instant rollback)


def ensure_loaded(runtime: Any, version: AdapterVersion) -> None:
    """Load ``version`` on ``runtime`` under its version name unless it is already loaded."""
    if version.version not in runtime.adapters:
        runtime.load_adapter(version.version, version.path)


def swap_to(runtime: Any, version: AdapterVersion | None) -> str | None:
    """Serve ``version`` (None: the bare base) from now on; returns the previously active name.

    Requests in flight finish with the adapter they started with. Versions older than the last
    :data:`KEEP_LOADED` that are loaded are unloaded after the switch.
    """
    previous = runtime.active_adapter
    if version is not None:
        ensure_loaded(runtime, version)
    runtime.set_active_adapter(version.version if version is not None else None)
    keep = {name for name in (previous, runtime.active_adapter) if name}
    for name in runtime.adapters:
        if name not in keep and len(runtime.adapters) > KEEP_LOADED:
            runtime.unload_adapter(name)
    return previous


def sync_with_registry(runtime: Any, registry: AdapterRegistry) -> str | None:
    """Make ``runtime`` serve the registry's active version (after a CLI promote or rollback).

    Returns the name now active; a no-op when it already is.
    """
    active = registry.active()
    name = active.version if active is not None else None
    if runtime.active_adapter != name:
        swap_to(runtime, active)
    return name
