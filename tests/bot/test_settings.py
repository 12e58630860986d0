"""Settings: environment and .env feed one typed object; bad values name their variable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot.settings import SettingsError, load_secrets, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run in an empty directory with no LOOPBOT_/DISCORD_ variables set."""
    import os

    for name in list(os.environ):
        if name.startswith(("LOOPBOT_", "DISCORD_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_env_example_loads_and_documents_every_setting(clean_env: Path) -> None:
    shutil.copy(ROOT / ".env.example", clean_env / ".env")
    settings = load_settings()
    assert settings.data_dir == Path.home() / ".local" / "share" / "loopbot"
    assert settings.discord.allowed_channels == []
    assert settings.discord.upvote_emoji == "👍"

    documented = (ROOT / ".env.example").read_text(encoding="utf-8")
    sections = {
        "model": "LOOPBOT_MODEL_",
        "kb": "LOOPBOT_KB_",
        "discord": "LOOPBOT_DISCORD_",
        "train": "LOOPBOT_TRAIN_",
    }
    for section, prefix in sections.items():
        for field in type(getattr(settings, section)).model_fields:
            assert f"{prefix}{field.upper()}" in documented, (
                f"{prefix}{field.upper()} missing from .env.example"
            )
    for field in ("data_dir", "log_level"):
        assert f"LOOPBOT_{field.upper()}" in documented


def test_environment_overrides_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("LOOPBOT_KB_TOP_K=7\nLOOPBOT_DATA_DIR=/from/dotenv\n", encoding="utf-8")
    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(clean_env / "state"))
    settings = load_settings()
    assert settings.kb.top_k == 7
    assert settings.data_dir == clean_env / "state"
    assert settings.db_path == clean_env / "state" / "loopbot.db"


def test_training_settings_reach_the_training_options(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.usecases.training import training_options

    defaults = training_options(load_settings())
    assert defaults.gradient_checkpointing == "auto" and defaults.dequantize and defaults.preference == "off"
    assert defaults.until_learned and (defaults.min_epochs, defaults.max_epochs) == (2.0, 12.0)
    for variable, value in (
        ("LOOPBOT_TRAIN_GRADIENT_CHECKPOINTING", "true"),
        ("LOOPBOT_TRAIN_DEQUANTIZE", "false"),
        ("LOOPBOT_TRAIN_PREFERENCE", "dpo"),
        ("LOOPBOT_TRAIN_PREFERENCE_EPOCHS", "3"),
        ("LOOPBOT_TRAIN_UNTIL_LEARNED", "false"),
        ("LOOPBOT_TRAIN_MIN_EPOCHS", "1"),
        ("LOOPBOT_TRAIN_MAX_EPOCHS", "20"),
    ):
        monkeypatch.setenv(variable, value)
    options = training_options(load_settings())
    assert options.gradient_checkpointing is True and not options.dequantize
    assert options.preference == "dpo" and options.preference_epochs == 3.0
    assert not options.until_learned and (options.min_epochs, options.max_epochs) == (1.0, 20.0)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LOOPBOT_KB_TOP_K", "many"),
        ("LOOPBOT_MODEL_DEVICE", "tpu"),
        ("LOOPBOT_TRAIN_EVAL_FRACTION", "1.5"),
        ("LOOPBOT_TRAIN_GRADIENT_CHECKPOINTING", "sometimes"),
        ("LOOPBOT_TRAIN_PREFERENCE", "kto"),
        ("LOOPBOT_LOG_LEVEL", "LOUD"),
    ],
)
def test_invalid_value_names_the_variable(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_missing_token_says_what_to_do(clean_env: Path) -> None:
    with pytest.raises(SettingsError, match="DISCORD_TOKEN is not set"):
        load_secrets()


def test_token_is_never_printed(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "x" * 24 + ".secret-part"
    monkeypatch.setenv("DISCORD_TOKEN", token)
    secrets = load_secrets()
    assert secrets.discord_token.get_secret_value() == token
    assert token not in repr(secrets) and token not in str(secrets)


def test_cli_reports_bad_setting_without_traceback(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    monkeypatch.setenv("LOOPBOT_MODEL_MAX_NEW_TOKENS", "-3")
    assert main(["model", "info"]) == 2
    err = capsys.readouterr().err
    assert "LOOPBOT_MODEL_MAX_NEW_TOKENS" in err and "Traceback" not in err
