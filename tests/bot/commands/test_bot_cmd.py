"""`loopbot bot run` without a usable token fails clearly, before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main


def test_bot_run_without_a_token_says_how_to_set_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(tmp_path / "data"))

    assert main(["bot", "run"]) == 2

    err = capsys.readouterr().err
    assert "DISCORD_TOKEN is not set" in err and ".env" in err
    assert not (tmp_path / "data").exists()  # nothing was built before the token check
