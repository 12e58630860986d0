"""The adapter registry: versions, staging, the atomic active pointer, rollback, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters.errors import AdapterError
from adapters.registry import ACTIVE_FILE, AdapterRegistry


def _publish(registry: AdapterRegistry, **meta: object) -> str:
    """Publish a fake adapter (the registry never reads the weights)."""
    with registry.stage() as stage:
        (stage.path / "adapter_config.json").write_text("{}")
        (stage.path / "adapter_model.safetensors").write_bytes(b"weights")
        return registry.publish(stage, {"base_model": "tiny", **meta}).version


def test_publish_numbers_versions_and_keeps_metadata(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path)
    assert registry.list() == [] and registry.active() is None
    first = _publish(registry, pair_ids=["a", "b"], pair_count=2, data_hash="h1")
    second = _publish(registry, parent=first)
    assert (first, second) == ("v0001", "v0002")
    meta = registry.get("2")
    assert meta.parent == "v0001" and meta.base_model == "tiny" and meta.created > 0
    assert registry.get("v0001").pair_ids == ["a", "b"]
    assert registry.active() is None  # publishing never activates


def test_unknown_version_lists_known_ones(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path)
    _publish(registry)
    with pytest.raises(AdapterError, match="v0001"):
        registry.get("v0009")


def test_failed_run_leaves_nothing(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path)
    with pytest.raises(RuntimeError), registry.stage() as stage:
        (stage.path / "adapter_config.json").write_text("{}")
        raise RuntimeError("training died")
    assert registry.list() == []
    assert list((tmp_path / ".staging").iterdir()) == []


def test_publish_refuses_a_run_without_weights(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path)
    with pytest.raises(AdapterError, match="did not finish"), registry.stage() as stage:
        registry.publish(stage, {})
    assert registry.list() == []


def test_publish_refuses_weights_the_runtime_cannot_load(tmp_path: Path) -> None:
    """A run that saved only ``adapter_model.bin`` (peft's older format) is not published: the runtime
    loads safetensors only, and would refuse the version as corrupt once it was active."""
    from adapters.serving import check_adapter_dir

    registry = AdapterRegistry(tmp_path)
    with pytest.raises(AdapterError, match=r"no adapter_model\.safetensors"), registry.stage() as stage:
        (stage.path / "adapter_config.json").write_text("{}")
        (stage.path / "adapter_model.bin").write_bytes(b"weights")
        with pytest.raises(AdapterError, match="corrupt"):  # what serving it would have said
            check_adapter_dir(stage.path, {}, "tiny")
        registry.publish(stage, {"base_model": "tiny"})
    assert registry.versions() == [] and not (tmp_path / "v0001").exists()


def test_promote_rollback_and_history(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path)
    v1, v2, v3 = (_publish(registry) for _ in range(3))
    registry.promote(v1)
    registry.promote(v2)
    registry.promote(v3)
    assert registry.active().version == v3
    assert registry.rollback().version == v2
    assert registry.active().version == v2
    assert registry.rollback().version == v1
    assert registry.rollback() is None and registry.active() is None
    with pytest.raises(AdapterError, match="Nothing to roll back"):
        registry.rollback()
    assert [e["action"] for e in registry.history()] == ["promote"] * 3 + ["rollback"] * 3


def test_update_metadata(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path)
    version = _publish(registry)
    registry.update_metadata(version, metrics={"heldout_f1": 0.5}, gate_report="r.csv")
    meta = registry.get(version)
    assert meta.metrics == {"heldout_f1": 0.5} and meta.gate_report == "r.csv"


_PROMOTER = """
import sys
from adapters.registry import AdapterRegistry
registry = AdapterRegistry(sys.argv[1])
print("ready", flush=True)
while True:
    for version in ("v0001", "v0002", "v0003"):
        registry.promote(version)
"""


def test_killed_promotion_leaves_a_valid_pointer(tmp_path: Path) -> None:
    """SIGKILL a process that promotes in a tight loop: the pointer is always whole and valid."""
    registry = AdapterRegistry(tmp_path)
    versions = {_publish(registry) for _ in range(3)}
    for delay in (0.05, 0.13, 0.21, 0.37):
        child = subprocess.Popen(
            [sys.executable, "-c", _PROMOTER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        state = json.loads((tmp_path / ACTIVE_FILE).read_text())
        assert state["active"] in versions
        assert registry.active().version in versions
    assert set(registry.versions()) == versions


def test_one_training_run_at_a_time(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path)
    with registry.training_lock():
        child = subprocess.run(
            [sys.executable, "-c", _LOCKER, str(tmp_path)], capture_output=True, text=True, timeout=60
        )
        assert "in progress" in child.stdout
    child = subprocess.run(
        [sys.executable, "-c", _LOCKER, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert child.stdout.strip() == "locked"


_LOCKER = """
import sys
from adapters.errors import AdapterError
from adapters.registry import AdapterRegistry
try:
    with AdapterRegistry(sys.argv[1]).training_lock():
        print("locked")
except AdapterError as error:
    print(error)
"""


def test_registry_cache_round_trip_and_bad_keys(tmp_path) -> None:
    from adapters.errors import AdapterError

    registry = AdapterRegistry(tmp_path / "adapters")
    assert registry.read_cache("anchors-x") is None
    registry.write_cache("anchors-x", [{"a": 1}])
    assert registry.read_cache("anchors-x") == [{"a": 1}]
    with pytest.raises(AdapterError, match="Invalid cache key"):
        registry.write_cache("../escape", [])
