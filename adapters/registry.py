"""Versioned LoRA adapters on disk: the only module that knows the registry's layout.

One registry per guild: ``<adapters dir>/guilds/<guild id>/`` (see :func:`guild_registry`).
Layout under a registry root::

    v0001/                  a peft adapter directory (adapter_config.json + safetensors)
        loopbot.json        metadata: version, base model, parent, data hash, pair ids, metrics, ...
    v0002/ ...
    active.json             {"active": "v0002", "stack": ["v0001", "v0002"], "events": [...]}
    .staging/<run>/         training runs in progress (never listed, never active)
    .failed/<run>/          the last few failed runs, kept for their train.log

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
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError

METADATA_FILE = "loopbot.json"
DATASET_FILE = "dataset.jsonl"  # the training rows a version was trained on
EVAL_DATASET_FILE = "eval.jsonl"  # the rows held out of its training to measure an eval loss on
# Its preference rows (a correction chosen over the answer it replaced), when preference training ran
PREFERENCE_DATASET_FILE = "preference.jsonl"
# Every file of a version that holds members' training text (a forget deletes them)
TRAINING_DATA_FILES = (DATASET_FILE, EVAL_DATASET_FILE, PREFERENCE_DATASET_FILE)
LEARNING_CURVE_FILE = "learning_curve.csv"  # its train loss per step, eval loss per epoch (numbers only)
GATE_REPORT_FILE = "gate_report.csv"  # the gate's per-question report of a version
# The version's own answers to the regression set at its gate, reused when it is the active one
REGRESSION_FILE = "regression_answers.json"
# The questions a version was taught (corrections and their rephrasings; not 👍 answers, not
# anchors): it answers only questions close to one of them (adapters/routing.py)
SCOPE_FILE = "questions.json"
ACTIVE_FILE = "active.json"
STAGING_DIR = ".staging"
FAILED_DIR = ".failed"
LOCK_FILE = ".train.lock"
KEEP_FAILED = 5
_VERSION_RE = re.compile(r"^v(\d{4,})$")
# peft writes one of these; a version directory without either is not a usable adapter.
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class AdapterVersion:
    """One published adapter version and its metadata (``loopbot.json``)."""

    version: str
    path: Path
    base_model: str = ""
    parent: str | None = None
    data_hash: str = ""
    pair_ids: list[str] = field(default_factory=list)
    pair_count: int = 0
    anchor_count: int = 0  # replayed base-model answers trained on too (not feedback pairs)
    heldout_pair_ids: list[str] = field(default_factory=list)  # the gate's pairs (not in the weights)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    gate_report: str | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    # The name a runtime loads it under: unique across registries (``g<guild>-v0003``), never stored.
    served_name: str = ""

    def forgotten_pairs(self, forgotten_pair_ids: Iterable[int | str]) -> set[str]:
        """Which of ``forgotten_pair_ids`` this version was trained on (empty: it can be served)."""
        return {str(i) for i in forgotten_pair_ids} & set(self.pair_ids)

    def to_json(self) -> dict[str, Any]:
        """The metadata as stored in ``loopbot.json`` (the path and served name are implied)."""
        data = asdict(self)
        data.pop("path")
        data.pop("served_name")
        return data

    @classmethod
    def from_dir(cls, path: Path, scope: str = "") -> AdapterVersion:
        """Read a version directory's metadata; a missing or broken file raises :class:`AdapterError`."""
        meta_path = path / METADATA_FILE
        try:
            data = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise AdapterError(
                f"Adapter metadata {meta_path} is missing or unreadable ({error}). "
                "Delete the directory or restore it from a backup."
            ) from None
        known = {f for f in cls.__dataclass_fields__ if f not in ("path", "served_name")}
        data = {k: v for k, v in data.items() if k in known}
        data["version"] = path.name
        return cls(path=path, served_name=f"{scope}-{path.name}" if scope else path.name, **data)


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON so readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


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


def _cache_key(key: str) -> str:
    if not key or not all(c.isalnum() or c in "-_." for c in key):
        raise AdapterError(f"Invalid cache key {key!r}: use letters, digits, '-', '_' and '.'.")
    return key


class Stage:
    """A training run's private directory; :meth:`AdapterRegistry.publish` turns it into a version."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"Stage({str(self.path)!r})"


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

        The stage must hold a complete peft adapter. The new version is not made active.
        """
        if not any((stage.path / name).is_file() for name in _WEIGHT_FILES):
            raise AdapterError(
                f"Training run {stage.path} has no adapter weights; the run did not finish. "
                "See train.log in that directory."
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
            _fsync_dir(self.root)
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
    _fsync_dir(target.root)
    _fsync_dir(top)
    return len(versions)
