"""The serving use cases (bot/usecases/serving.py): what a registry serves on a runtime."""

from __future__ import annotations

import logging

from adapters.registry import AdapterRegistry
from bot.usecases.serving import serve_active


def test_an_unreadable_active_adapter_serves_the_base_model_with_a_warning(
    tiny_runtime, tmp_path, make_lora_adapter, tiny_model_dir, caplog
) -> None:
    registry = AdapterRegistry(tmp_path / "adapters")
    with registry.stage() as stage:
        source = make_lora_adapter(tiny_model_dir)
        for item in source.iterdir():
            (stage.path / item.name).write_bytes(item.read_bytes())
        version = registry.publish(stage, {"base_model": str(tiny_model_dir)})
    registry.promote(version.version)
    (version.path / "adapter_model.safetensors").write_bytes(b"not a tensor file")
    with caplog.at_level(logging.WARNING):
        assert serve_active(tiny_runtime, registry) is None
    assert tiny_runtime.active_adapter is None and "serving the bare base model" in caplog.text
    assert tiny_runtime.generate([{"role": "user", "content": "hi"}], max_new_tokens=2).text is not None
