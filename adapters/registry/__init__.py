"""Versioned LoRA adapters on disk: the only package that knows the registry's layout.

- :mod:`~adapters.registry._places`: where the registries are (one per guild, one per member)
- :mod:`~adapters.registry._registry`: one registry: versions, the active pointer, staging, the lock;
  its cache, and the cache beside a base model (:class:`BaseModelCache`)
- :mod:`~adapters.registry._version`: one version's directory, every file in it, read and written here

A kill at any moment leaves a registry as it was or as it became, never a mix (how: ``_registry``).
"""

from adapters.registry._places import (
    adopt_legacy_versions,
    all_registries,
    guild_ids,
    guild_registry,
    member_ids,
    member_registry,
)
from adapters.registry._registry import (
    ACTIVE_FILE,
    BASE_CACHE_DIR,
    AdapterRegistry,
    BaseModelCache,
    model_stamp,
)
from adapters.registry._version import (
    ADAPTER_CONFIG_FILE,
    TRAINING_DATA_FILES,
    WEIGHTS_FILE,
    AdapterVersion,
    Stage,
    read_scope,
    scope_entries,
    scope_stamp,
    write_json_atomic,
    write_scope,
)

__all__ = [
    "ACTIVE_FILE",
    "ADAPTER_CONFIG_FILE",
    "BASE_CACHE_DIR",
    "TRAINING_DATA_FILES",
    "WEIGHTS_FILE",
    "AdapterRegistry",
    "AdapterVersion",
    "BaseModelCache",
    "Stage",
    "adopt_legacy_versions",
    "all_registries",
    "guild_ids",
    "guild_registry",
    "member_ids",
    "member_registry",
    "model_stamp",
    "read_scope",
    "scope_entries",
    "scope_stamp",
    "write_json_atomic",
    "write_scope",
]
