"""The CLI of the model area: ``model info``, ``model prepare``, ``eval`` and the first ``ask``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty loopbot data dir: nothing prepared."""
    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LOOPBOT_MODEL_BASE", raising=False)
    return tmp_path / "data"


def test_ask_without_prepared_model_says_what_to_do(data_dir: Path) -> None:
    # A real process: the operator must see one clear line and no traceback.
    env = {**os.environ, "LOOPBOT_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "bot", "ask", "Hello?", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2
    assert "loopbot model prepare" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_offline_hub_id_is_a_clear_error(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOPBOT_MODEL_BASE", "TheBloke/Llama-2-13B-chat-GPTQ")
    assert main(["model", "info"]) == 2
    err = capsys.readouterr().err
    assert "not on this machine and the hub is offline" in err
    assert "LOOPBOT_MODEL_BASE" in err


def test_missing_model_directory_is_a_clear_error(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOPBOT_MODEL_BASE", str(data_dir / "no-such-model"))
    assert main(["ask", "Hello?"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_model_info_on_tiny_gptq(
    data_dir: Path, tiny_gptq_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOPBOT_MODEL_BASE", str(tiny_gptq_dir))
    assert main(["model", "info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantization"] == "gptq" and info["bits"] == 4
    assert info["base"] == str(tiny_gptq_dir) and info["active"] is None


def test_ask_json_shape_on_tiny_gptq(
    data_dir: Path, tiny_gptq_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOPBOT_MODEL_BASE", str(tiny_gptq_dir))
    monkeypatch.setenv("LOOPBOT_MODEL_MAX_NEW_TOKENS", "6")
    assert main(["ask", "What is the capital of Japan?", "--json", "--user", "1", "--guild", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"answer", "sources", "adapter"}
    assert isinstance(result["answer"], str) and result["answer"]
    assert result["sources"] == [] and result["adapter"] is None


def test_eval_writes_a_graded_csv(
    data_dir: Path,
    tiny_gptq_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LOOPBOT_MODEL_BASE", str(tiny_gptq_dir))
    questions = tmp_path / "q.csv"
    questions.write_text(
        "question,expected_any\nSay anything.,zzzqqq\nWho is president?,\n", encoding="utf-8"
    )
    out = tmp_path / "report" / "eval.csv"
    assert main(["eval", "--out", str(out), "--questions", str(questions)]) == 0
    rows = list(csv.DictReader(out.read_text(encoding="utf-8").splitlines()))
    assert [r["question"] for r in rows] == ["Say anything.", "Who is president?"]
    assert set(rows[0]) == {"question", "expected", "answer", "correct"}
    assert rows[0]["correct"] == "false" and rows[1]["correct"] == ""
    assert "accuracy 0.00 (0/1 gradable)" in capsys.readouterr().out


def test_eval_bad_questions_file(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("q,a\nx,y\n", encoding="utf-8")
    assert main(["eval", "--out", str(tmp_path / "o.csv"), "--questions", str(bad)]) == 2
    assert "question,expected_any" in capsys.readouterr().err


@pytest.mark.slow
def test_ask_capital_of_japan_on_default_model(
    default_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end on the real offline default model, in a real process, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if k != "LOOPBOT_MODEL_BASE"}
    env["LOOPBOT_DATA_DIR"] = str(default_model_path.parent.parent)
    done = subprocess.run(
        [sys.executable, "-m", "bot", "ask", "What is the capital of Japan?", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "tokyo" in result["answer"].lower()
    assert result["sources"] == [] and result["adapter"] is None


@pytest.mark.slow
def test_prepare_is_idempotent(
    default_model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(default_model_path.parent.parent))
    before = sorted(p.name for p in default_model_path.iterdir())
    assert main(["model", "prepare", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "already prepared" in out
    assert "native decode kernels ready" in out  # built (or found) for this machine
    assert sorted(p.name for p in default_model_path.iterdir()) == before
    monkeypatch.setenv("LOOPBOT_MODEL_NATIVE_DECODE", "false")
    assert main(["model", "prepare", "--no-progress"]) == 0
    assert "native" not in capsys.readouterr().out
