"""Hot swap: make a running runtime serve a registry version, for one scope or for all.

Adapters are loaded under their served name (``v0003``, or ``g<guild>-v0003`` for a guild's
registry), never reloaded under one fixed name, so a request already queued keeps the adapter it
was submitted with (the runtime fixes the adapter per job) and the switch is one pointer change.
Old versions are unloaded only once they have been out of use for a whole swap, so no queued
request can lose its adapter.

:func:`swap_to` moves the runtime's default adapter (the CLI, one-guild setups). A
:class:`ServedAdapters` serves a different version per scope (a guild, a member) on one runtime and
keeps loaded what the scopes use; the bot asks it which version a guild's questions get.
"""

from __future__ import annotations

import threading
from typing import Any

from adapters.registry import AdapterRegistry, AdapterVersion

KEEP_LOADED = 2  # the active version and the one before it (instant rollback)


def served_name(version: AdapterVersion) -> str:
    """The name ``version`` is loaded under on a runtime."""
    return version.served_name or version.version


def ensure_loaded(runtime: Any, version: AdapterVersion) -> None:
    """Load ``version`` on ``runtime`` under its served name unless it is already loaded."""
    if served_name(version) not in runtime.adapters:
        runtime.load_adapter(served_name(version), version.path)


def swap_to(runtime: Any, version: AdapterVersion | None) -> str | None:
    """Serve ``version`` (None: the bare base) by default from now on; returns the previously active name.

    Requests in flight finish with the adapter they started with. Versions older than the last
    :data:`KEEP_LOADED` that are loaded are unloaded after the switch.
    """
    previous = runtime.active_adapter
    if version is not None:
        ensure_loaded(runtime, version)
    runtime.set_active_adapter(served_name(version) if version is not None else None)
    keep = {name for name in (previous, runtime.active_adapter) if name}
    for name in runtime.adapters:
        if name not in keep and len(runtime.adapters) > KEEP_LOADED:
            runtime.unload_adapter(name)
    return previous


def sync_with_registry(runtime: Any, registry: AdapterRegistry) -> str | None:
    """Make ``runtime`` serve the registry's active version by default (after a CLI promote or rollback).

    Returns the name now active; a no-op when it already is.
    """
    active = registry.active()
    name = served_name(active) if active is not None else None
    if runtime.active_adapter != name:
        swap_to(runtime, active)
    return name


class ServedAdapters:
    """Which version each scope (a guild, a member) is served on one shared runtime, and which
    adapters that keeps loaded.

    Each scope keeps its current and its previous adapter loaded (requests queued before a swap
    still find theirs); an adapter it served that no scope uses either way is unloaded.
    Adapters loaded by others (a candidate being gated) are never unloaded here. Thread-safe.
    """

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self._current: dict[str, str | None] = {}
        self._previous: dict[str, str | None] = {}
        self._served: set[str] = set()
        self._lock = threading.Lock()

    def name_for(self, scope: str) -> str | None:
        """The served name of the version ``scope`` gets now (None: none, the base model)."""
        return self._current.get(scope)

    def scopes(self) -> list[str]:
        """The scopes served so far."""
        return list(self._current)

    def swap(self, scope: str, version: AdapterVersion | None) -> str | None:
        """Answer ``scope`` with ``version`` (None: the base model) from now on; the previous name."""
        with self._lock:
            if version is not None:
                ensure_loaded(self.runtime, version)
            previous = self._current.get(scope)
            name = served_name(version) if version is not None else None
            if name != previous:
                self._previous[scope] = previous
            self._current[scope] = name
            if name is not None:
                self._served.add(name)
            self._unload_unused()
            return previous

    def drop(self, scope: str) -> None:
        """Stop serving ``scope`` and unload what only it used, its previous adapter included (a
        forgotten member's own adapter leaves memory; the runtime lets requests using it finish)."""
        with self._lock:
            self._current.pop(scope, None)
            self._previous.pop(scope, None)
            self._unload_unused()

    def _unload_unused(self) -> None:
        in_use = {n for n in (*self._current.values(), *self._previous.values()) if n}
        in_use.add(self.runtime.active_adapter)
        for loaded in self.runtime.adapters:
            if loaded in self._served and loaded not in in_use:
                self.runtime.unload_adapter(loaded)
                self._served.discard(loaded)

    def sync(self, scope: str, registry: AdapterRegistry) -> str | None:
        """Serve ``scope`` the registry's active version (a no-op when it already does)."""
        active = registry.active()
        name = served_name(active) if active is not None else None
        if scope not in self._current or self._current[scope] != name:
            self.swap(scope, active)
        return name
