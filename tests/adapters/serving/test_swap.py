"""Hot swap on a running runtime: requests in flight keep their adapter, none fails; registry sync;
one runtime serving each scope its own version (ServedAdapters)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from adapters.registry import AdapterRegistry
from adapters.serving import KEEP_LOADED, swap_to, sync_with_registry

QUESTION = [{"role": "user", "content": "What does the bot know about cats?"}]


@pytest.fixture
def registry(tmp_path: Path, tiny_model_dir: Path, make_lora_adapter) -> AdapterRegistry:
    """A registry with three versions made from different random LoRA adapters."""
    registry = AdapterRegistry(tmp_path / "adapters")
    for seed in (21, 22, 23):
        with registry.stage() as stage:
            source = make_lora_adapter(tiny_model_dir, seed=seed)
            for item in source.iterdir():
                shutil.copy(item, stage.path / item.name)
            registry.publish(stage, {"base_model": str(tiny_model_dir)})
    return registry


def _reference(runtime, names: list[str | None]) -> dict[str | None, str]:
    return {name: runtime.generate(QUESTION, adapter=name, max_new_tokens=8).text for name in names}


def test_swap_while_requests_run(tiny_runtime, registry: AdapterRegistry) -> None:
    """Clients ask continuously while the adapter is swapped back and forth: no request fails and
    each answer is exactly what the adapter it started with gives (greedy decoding is deterministic)."""
    v1, v2 = registry.get("v0001"), registry.get("v0002")
    swap_to(tiny_runtime, v1)
    swap_to(tiny_runtime, v2)
    reference = _reference(tiny_runtime, ["v0001", "v0002"])
    assert reference["v0001"] != reference["v0002"]
    results, errors = [], []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                future = tiny_runtime.submit(QUESTION, max_new_tokens=8)  # the adapter active right now
                results.append(future.result(timeout=120))
            except Exception as error:  # any failure is a test failure
                errors.append(error)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(6):
            for version in (v1, v2):
                swap_to(tiny_runtime, version)
                threading.Event().wait(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors
    assert {r.adapter for r in results} == {"v0001", "v0002"}
    assert all(r.text == reference[r.adapter] for r in results)


def test_swap_keeps_only_recent_versions_loaded(tiny_runtime, registry: AdapterRegistry) -> None:
    for version in ("v0001", "v0002", "v0003"):
        previous = tiny_runtime.active_adapter
        assert swap_to(tiny_runtime, registry.get(version)) == previous
    assert tiny_runtime.active_adapter == "v0003"
    assert sorted(tiny_runtime.adapters) == ["v0002", "v0003"] and len(tiny_runtime.adapters) == KEEP_LOADED
    swap_to(tiny_runtime, None)
    assert tiny_runtime.active_adapter is None
    assert tiny_runtime.generate(QUESTION, max_new_tokens=4).adapter is None


def test_runtime_follows_promote_and_rollback(tiny_runtime, registry: AdapterRegistry) -> None:
    assert sync_with_registry(tiny_runtime, registry) is None and tiny_runtime.adapters == []
    registry.promote("v0001")
    registry.promote("v0002")
    assert sync_with_registry(tiny_runtime, registry) == "v0002"
    assert tiny_runtime.generate(QUESTION, max_new_tokens=4).adapter == "v0002"
    registry.rollback()
    assert sync_with_registry(tiny_runtime, registry) == "v0001"
    assert tiny_runtime.generate(QUESTION, max_new_tokens=4).adapter == "v0001"
    assert "v0001" in tiny_runtime.adapters


def test_served_adapters_give_each_scope_its_own_and_unload_only_what_they_loaded(
    tiny_runtime, registry: AdapterRegistry, make_lora_adapter, tiny_model_dir
) -> None:
    from adapters.serving import ServedAdapters

    served = ServedAdapters(tiny_runtime)
    v1, v2, v3 = (registry.get(v) for v in ("v0001", "v0002", "v0003"))
    served.swap("cats", v1)
    served.swap("dogs", v2)
    tiny_runtime.load_adapter("candidate", make_lora_adapter(tiny_model_dir, seed=40))  # e.g. being gated
    assert (served.name_for("cats"), served.name_for("dogs"), served.name_for("birds")) == (
        "v0001",
        "v0002",
        None,
    )
    reference = _reference(tiny_runtime, ["v0001", "v0002"])
    assert reference["v0001"] != reference["v0002"]

    served.swap("cats", v3)  # v0001 stays loaded: cats' previous adapter (queued requests keep it)
    assert set(tiny_runtime.adapters) == {"v0001", "v0002", "v0003", "candidate"}
    served.swap("cats", None)  # v0001 is now nobody's current or previous: unloaded
    assert set(tiny_runtime.adapters) == {"v0002", "v0003", "candidate"}
    assert served.name_for("cats") is None and served.name_for("dogs") == "v0002"
    assert served.sync("dogs", registry) is None and served.name_for("dogs") is None  # nothing active
