"""Where the registries live under the adapters directory: one per guild, one per member with an
adapter of their own, and the one from before per-guild adapters (adopted by the only guild)::

    <adapters dir>/guilds/<guild id>/      a guild's registry, served as ``g<guild id>-vNNNN``
    <adapters dir>/members/<member id>/    a member's own registry, served as ``m<member id>-vNNNN``
    <adapters dir>/vNNNN, active.json      the registry of old (adopted by :func:`adopt_legacy_versions`)
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path

from adapters.errors import AdapterError
from adapters.registry._registry import LOCK_FILE, AdapterRegistry
from adapters.registry._version import fsync_dir

GUILDS_DIR = "guilds"
MEMBERS_DIR = "members"


def guild_registry(adapters_dir: Path | str, guild_id: str) -> AdapterRegistry:
    """The registry of one guild's adapters, ``<adapters_dir>/guilds/<guild_id>``; its versions are
    served as ``g<guild_id>-vNNNN``. Guild ids are Discord snowflakes (digits)."""
    if not str(guild_id).isdigit():
        raise AdapterError(f"Invalid guild id {guild_id!r}: pass the Discord server id (digits).")
    return AdapterRegistry(Path(adapters_dir) / GUILDS_DIR / str(guild_id), guild_id=str(guild_id))


def member_registry(adapters_dir: Path | str, member_id: str) -> AdapterRegistry:
    """The registry of one member's own adapters, ``<adapters_dir>/members/<member_id>``, trained on
    their personal pairs only and served only to them; its versions are served as ``m<id>-vNNNN``."""
    if not str(member_id).isdigit():
        raise AdapterError(f"Invalid member id {member_id!r}: pass the Discord user id (digits).")
    return AdapterRegistry(Path(adapters_dir) / MEMBERS_DIR / str(member_id), member_id=str(member_id))


def _ids_under(root: Path) -> builtins.list[str]:
    """The Discord ids (digit-named directories) under ``root``, sorted; none if it does not exist."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []


def guild_ids(adapters_dir: Path | str) -> builtins.list[str]:
    """The guilds that have a registry under ``adapters_dir``."""
    return _ids_under(Path(adapters_dir) / GUILDS_DIR)


def member_ids(adapters_dir: Path | str) -> builtins.list[str]:
    """The members who have an adapter registry of their own under ``adapters_dir``."""
    return _ids_under(Path(adapters_dir) / MEMBERS_DIR)


def all_registries(adapters_dir: Path | str) -> builtins.list[AdapterRegistry]:
    """Every registry under ``adapters_dir``: each guild's, the one from before per-guild adapters, and
    each member's own (trained on shared pairs too, beside theirs: a forget must reach them)."""
    return [
        AdapterRegistry(adapters_dir),
        *(guild_registry(adapters_dir, g) for g in guild_ids(adapters_dir)),
        *(member_registry(adapters_dir, m) for m in member_ids(adapters_dir)),
    ]


def adopt_legacy_versions(adapters_dir: Path | str, guild_id: str) -> int:
    """Move the versions of a registry from before per-guild adapters (``vNNNN/``, ``active.json``,
    failed runs and caches at the top of ``adapters_dir``) into ``guild_id``'s registry, keeping
    their names, metadata and history. Only into a guild registry that has no version yet; returns
    how many versions moved (0 when there was nothing to adopt)."""
    top = Path(adapters_dir)
    target = guild_registry(top, guild_id)
    legacy = AdapterRegistry(top)
    versions = legacy.versions()
    if not versions or target.versions():
        return 0
    target.root.mkdir(parents=True, exist_ok=True)
    with legacy.training_lock():
        for child in top.iterdir():
            if child.name == GUILDS_DIR or child.name == LOCK_FILE:
                continue
            os.rename(child, target.root / child.name)
    fsync_dir(target.root)
    fsync_dir(top)
    return len(versions)
