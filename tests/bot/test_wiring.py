"""The composition root: settings turned into parts (bot/wiring.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

QUESTION = [{"role": "user", "content": "What does the bot know about cats?"}]


def test_build_runtime_serves_the_registry_active_version(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_gptq_dir: Path,
    tiny_model_dir: Path,
    make_lora_adapter,
) -> None:
    from bot.settings import load_settings
    from bot.wiring import build_registry, build_runtime

    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOOPBOT_MODEL_BASE", str(tiny_gptq_dir))
    monkeypatch.setenv("LOOPBOT_MODEL_DEVICE", "cpu")
    settings = load_settings()
    registry = build_registry(settings, "1001")
    assert registry.root == settings.adapters_dir / "guilds" / "1001"
    with registry.stage() as stage:
        for item in make_lora_adapter(tiny_model_dir, seed=31).iterdir():
            shutil.copy(item, stage.path / item.name)
        registry.publish(stage, {"base_model": str(tiny_gptq_dir)})
    registry.promote("v0001")
    runtime = build_runtime(settings, guild_id="1001")
    try:
        assert runtime.active_adapter == "g1001-v0001"
        assert runtime.generate(QUESTION, max_new_tokens=4).adapter == "g1001-v0001"
    finally:
        runtime.close()
