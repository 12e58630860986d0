"""One registry: versioned LoRA adapters under a root directory, an active pointer and its history.

Layout under a registry root (a version's own files: :mod:`adapters.registry._version`)::

    v0001/                  a LoRA adapter directory (adapter_config.json + adapter_model.safetensors)
        loopbot.json        metadata: version, base model, parent, data hash, pair ids, metrics, ...
    v0002/ ...
    active.json             {"active": "v0002", "stack": ["v0001", "v0002"], "events": [...]}
    .staging/<run>/         training runs in progress (never listed, never active)
    .failed/<run>/          the last few failed runs, kept for their train.log
    cache-<key>.json        data derived from the base model that training reuses (anchor answers, ...)

Crash safety comes from two atomic primitives: a finished run is published with one ``os.rename``
of its staging directory to ``vNNNN`` (a half-written run therefore never looks like a version),
and the active pointer is replaced with write-temp + fsync + ``os.replace``. A kill at any moment
leaves either the old state or the new one, never a mix.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError
from adapters.registry._version import (
    GATE_REPORT_FILE,
    METADATA_FILE,
    REGRESSION_FILE,
    SCOPE_FILE,
    TRAINING_DATA_FILES,
    WEIGHTS_FILE,
    AdapterVersion,
    Stage,
    fsync_dir,
    write_json_atomic,
)

STAGING_DIR = ".staging"
FAILED_DIR = ".failed"
LOCK_FILE = ".train.lock"
ACTIVE_FILE = "active.json"
KEEP_FAILED = 5
_VERSION_RE = re.compile(r"^v(\d{4,})$")


def _cache_key(key: str) -> str:
    """``key`` if it can name a cache file (letters, digits, '-', '_', '.'); else AdapterError."""
    if not key or not all(c.isalnum() or c in "-_." for c in key):
        raise AdapterError(f"Invalid cache key {key!r}: use letters, digits, '-', '_' and '.'.")
    return key


# Answers of a base model that no adapter and no member shaped (its anchors, its regression answers),
# kept beside the model: every server and member of every data dir serving that model shares them.
BASE_CACHE_DIR = "loopbot-cache"


class BaseModelCache:
    """JSON values derived from a base model alone, in ``<model dir>/loopbot-cache/``, beside the
    registries' own caches (:meth:`AdapterRegistry.read_cache`). A model directory loopbot cannot write
    to keeps nothing here; the registries' caches still do."""

    def __init__(self, model_dir: Path | str) -> None:
        self.root = Path(model_dir) / BASE_CACHE_DIR

    def read(self, key: str) -> Any | None:
        """The value written under ``key`` (None when absent or unreadable)."""
        try:
            return json.loads((self.root / f"{_cache_key(key)}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write(self, key: str, data: Any) -> bool:
        """Store ``data`` under ``key``, atomically; False when the model directory is not writable."""
        try:
            write_json_atomic(self.root / f"{_cache_key(key)}.json", data)
        except OSError:
            return False
        return True


def model_stamp(base_model: str | Path) -> float | None:
    """When a model's files were written (a model prepared again answers anew): part of the keys its
    cached answers are kept under."""
    model = Path(base_model)
    for path in (model / "config.json", model):
        if path.exists():
            return path.stat().st_mtime
    return None


class AdapterRegistry:
    """Versioned adapters under ``root`` with an atomically replaced active pointer and history."""

    def __init__(self, root: Path | str, guild_id: str | None = None, member_id: str | None = None) -> None:
        self.root = Path(root)
        # The guild whose adapters these are (None: a member's, or the registry of old).
        self.guild_id = guild_id
        self.member_id = member_id  # the member whose own adapters these are (their personal pairs)
        # Prefixes the served names of its versions, so several registries share one runtime.
        self.scope = f"g{guild_id}" if guild_id else f"m{member_id}" if member_id else ""

    # ----- reading -------------------------------------------------------------------------------
    def read_cache(self, key: str) -> Any | None:
        """A JSON value stored with :meth:`write_cache` under ``key`` (None when absent or unreadable).

        For data derived from a base model that training reuses, e.g. the replayed anchor answers."""
        try:
            return json.loads(self._cache_path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_cache(self, key: str, data: Any) -> None:
        """Store ``data`` as JSON under ``key``, atomically."""
        write_json_atomic(self._cache_path(key), data)

    def _cache_path(self, key: str) -> Path:
        return self.root / f"cache-{_cache_key(key)}.json"

    def list(self) -> builtins.list[AdapterVersion]:
        """All published versions, oldest first."""
        if not self.root.is_dir():
            return []
        versions = []
        for child in self.root.iterdir():
            match = _VERSION_RE.match(child.name)
            if match and child.is_dir() and (child / METADATA_FILE).is_file():
                versions.append((int(match.group(1)), child))
        return [AdapterVersion.from_dir(path, self.scope) for _, path in sorted(versions)]

    def versions(self) -> builtins.list[str]:
        """Names of all published versions, oldest first."""
        return [v.version for v in self.list()]

    def get(self, version: str) -> AdapterVersion:
        """One version's metadata; an unknown version raises :class:`AdapterError` listing the known ones."""
        version = self._normalise(version)
        path = self.root / version
        if not (path / METADATA_FILE).is_file():
            known = ", ".join(self.versions()) or "none yet (run `loopbot train`)"
            raise AdapterError(f"Unknown adapter version {version!r}. Known versions: {known}.")
        return AdapterVersion.from_dir(path, self.scope)

    def active(self) -> AdapterVersion | None:
        """The active version, or ``None`` when the bare base model is served."""
        name = self._state().get("active")
        return self.get(name) if name else None

    def history(self) -> builtins.list[dict[str, Any]]:
        """Every promotion and rollback, oldest first: ``{"action", "version", "time"}``."""
        return list(self._state().get("events", []))

    # ----- writing -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self) -> Iterator[Stage]:
        """A fresh staging directory for one training run; removed if the block raises.

        Publish it with :meth:`publish` inside the block. A staging directory left by a killed
        process is invisible to :meth:`list` and removed by :meth:`clean_staging`.
        """
        staging = self.root / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        stage = Stage(Path(tempfile.mkdtemp(prefix="run-", dir=staging)))
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage.path, ignore_errors=True)
            raise

    def publish(self, stage: Stage, metadata: dict[str, Any]) -> AdapterVersion:
        """Write ``metadata`` into the staged run and rename it to the next free ``vNNNN``.

        The stage must hold a complete adapter in the one weights format the runtime loads
        (``adapter_model.safetensors``). The new version is not made active.
        """
        if not (stage.path / WEIGHTS_FILE).is_file():
            raise AdapterError(
                f"Training run {stage.path} has no {WEIGHTS_FILE}; the run did not finish or saved "
                "another format. See train.log in that directory."
            )
        metadata = dict(metadata)
        metadata.setdefault("created", time.time())
        for attempt in range(100):
            version = self._next_version(attempt)
            metadata["version"] = version
            write_json_atomic(stage.path / METADATA_FILE, metadata)
            try:
                # Atomic: the directory appears complete under its version name or not at all.
                os.rename(stage.path, self.root / version)
            except OSError:
                continue  # another process took this number first; try the next one
            fsync_dir(self.root)
            return self.get(version)
        raise AdapterError(f"Could not find a free version number under {self.root}.")

    def update_metadata(self, version: str, **changes: Any) -> AdapterVersion:
        """Merge ``changes`` into a version's metadata (atomically), e.g. metrics or the gate report."""
        current = self.get(version)
        data = current.to_json()
        data.update(changes)
        write_json_atomic(current.path / METADATA_FILE, data)
        return self.get(version)

    def promote(self, version: str) -> AdapterVersion:
        """Make ``version`` the active adapter (pushed on the history stack)."""
        target = self.get(version)
        state = self._state()
        stack = [v for v in state.get("stack", []) if v != target.version] + [target.version]
        self._write_state(state, target.version, stack, "promote")
        return target

    def deactivate(self, action: str = "deactivate") -> None:
        """Serve the bare base model (the history stack is kept); ``action`` names why in the history."""
        state = self._state()
        self._write_state(state, None, list(state.get("stack", [])), action)

    def scrub_pairs(self, pair_ids: set[str]) -> builtins.list[str]:
        """Delete the stored training data, scope, gate reports and regression answers of every version that
        trained on, or was gated on, any of ``pair_ids`` (forgotten members' pairs), and the datasets of failed runs.

        The versions' metadata and weights stay (so ``adapters list`` can say what they held); returns
        the versions scrubbed."""
        scrubbed = []
        for version in self.list():
            if pair_ids & {*version.pair_ids, *version.heldout_pair_ids}:
                for name in (*TRAINING_DATA_FILES, SCOPE_FILE, GATE_REPORT_FILE, REGRESSION_FILE):
                    with contextlib.suppress(FileNotFoundError):
                        (version.path / name).unlink()
                scrubbed.append(version.version)
        failed = self.root / FAILED_DIR
        if failed.is_dir():
            for name in TRAINING_DATA_FILES:
                for dataset in failed.glob(f"*/{name}"):
                    dataset.unlink()
        return scrubbed

    def rollback(self) -> AdapterVersion | None:
        """Go back to the previously active version; returns it (``None``: back to the bare base)."""
        state = self._state()
        stack = list(state.get("stack", []))
        if not stack:
            raise AdapterError("Nothing to roll back: no adapter has been promoted yet.")
        stack.pop()
        previous = stack[-1] if stack else None
        if previous is not None:
            self.get(previous)  # refuse to point at a version deleted by hand
        self._write_state(state, previous, stack, "rollback")
        return self.get(previous) if previous else None

    def keep_failed(self, stage: Stage) -> Path:
        """Move a failed run out of staging, keeping its log; only the last few failures are kept."""
        failed = self.root / FAILED_DIR
        failed.mkdir(parents=True, exist_ok=True)
        dest = failed / stage.path.name
        os.rename(stage.path, dest)
        runs = sorted(failed.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in runs[:-KEEP_FAILED]:
            shutil.rmtree(old, ignore_errors=True)
        return dest

    @contextlib.contextmanager
    def training_lock(self) -> Iterator[None]:
        """Hold the registry's training lock (one run at a time); AdapterError if another run holds it.

        An OS file lock: released by the kernel when the holder dies, so a killed run never blocks.
        """
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AdapterError(
                    "Another training run is in progress on this registry; wait for it to finish."
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def clean_staging(self) -> int:
        """Remove staging directories left by killed runs; returns how many were removed.

        Call it only while holding :meth:`training_lock`, so no live run's directory is removed.
        """
        staging = self.root / STAGING_DIR
        if not staging.is_dir():
            return 0
        removed = 0
        for child in staging.iterdir():
            shutil.rmtree(child, ignore_errors=True)
            removed += 1
        return removed

    # ----- internals -----------------------------------------------------------------------------
    def _normalise(self, version: str) -> str:
        """Accept ``v0003``, ``3`` or ``0003``."""
        text = str(version).strip()
        if text.isdigit():
            return f"v{int(text):04d}"
        return text

    def _next_version(self, offset: int) -> str:
        numbers = [int(m.group(1)) for c in self._dir_names() if (m := _VERSION_RE.match(c))]
        return f"v{max(numbers, default=0) + 1 + offset:04d}"

    def _dir_names(self) -> builtins.list[str]:
        return [c.name for c in self.root.iterdir()] if self.root.is_dir() else []

    def _state(self) -> dict[str, Any]:
        path = self.root / ACTIVE_FILE
        if not path.is_file():
            return {"active": None, "stack": [], "events": []}
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise AdapterError(
                f"{path} is not valid JSON ({error}). Fix it or delete it to serve the bare base model."
            ) from None
        return state if isinstance(state, dict) else {"active": None, "stack": [], "events": []}

    def _write_state(
        self, state: dict[str, Any], active: str | None, stack: builtins.list[str], action: str
    ) -> None:
        events = list(state.get("events", []))
        events.append({"action": action, "version": active, "time": time.time()})
        write_json_atomic(self.root / ACTIVE_FILE, {"active": active, "stack": stack, "events": events})
