"""``loopbot ingest`` / ``kb stats`` / ``kb delete`` / ``forget`` through the real CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no stray .env
    return tmp_path / "data"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stats(capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, _ = run(capsys, "kb", "stats", "--json")
    assert code == 0
    return json.loads(out)


def test_ingest_stats_delete_forget(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "faq.md").write_text(
        "Cats sleep 12 to 16 hours a day.\n\nChange the water daily.", encoding="utf-8"
    )
    (docs / "qa.jsonl").write_text('{"question": "Q?", "answer": "A."}\n{broken\n', encoding="utf-8")
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02")

    assert stats(capsys)["community_chunks"] == 0  # nothing yet, and nothing created
    code, out, err = run(capsys, "ingest", str(docs), "--guild", "100", "--no-progress")
    assert code == 0
    assert "ingested 2 file(s), 2 chunk(s): 2 added, 0 unchanged, 0 old removed; 2 problem(s)" in out
    assert "problem: blob.txt: looks like a binary file" in err and "problem: qa.jsonl line 2" in err

    code, out, _ = run(capsys, "ingest", str(docs), "--guild", "100", "--no-progress")
    assert "0 added, 2 unchanged" in out

    notes = tmp_path / "notes.txt"
    notes.write_text("Mochi got her booster in May.", encoding="utf-8")
    code, out, _ = run(
        capsys, "ingest", str(notes), "--scope", "personal", "--owner", "7", "--guild", "100", "--no-progress"
    )
    assert code == 0 and "1 added" in out
    assert stats(capsys) | {"lexical_rows": None} == {
        "embedder": "all-MiniLM-L6-v2",
        "community_chunks": 2,
        "community_by_guild": {"100": 2},
        "personal_records": 1,
        "members_with_records": 1,
        "lexical_rows": None,
    }
    code, out, _ = run(capsys, "kb", "stats")
    assert "community chunks: 2" in out and "personal records: 1 (1 member(s))" in out

    code, out, _ = run(capsys, "kb", "delete", "--source", "docs/faq.md", "--guild", "100")
    assert (code, out.strip()) == (0, "deleted 1 chunk(s) of docs/faq.md")
    code, out, _ = run(capsys, "kb", "delete", "--source", "docs/faq.md")
    assert (code, out.strip()) == (1, "deleted 0 chunk(s) of docs/faq.md")

    code, out, _ = run(capsys, "forget", "--user", "7")
    assert code == 0 and "deleted 1 personal record(s)" in out and "training pair(s)" in out
    assert stats(capsys)["personal_records"] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "x.txt", "--guild", "1"], "x.txt: no such file or directory"),
        (["ingest", ".", "--guild", "1", "--scope", "personal"], "personal records need an owner"),
        (["ingest", ".", "--guild", "1", "--owner", "2"], "community posts have no owner"),
        (["forget", "--user", "not an id"], "user id must be"),
    ],
)
def test_user_errors_exit_2(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith("error: ") and message in err and "Traceback" not in err


def test_too_many_files(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("LOOPBOT_KB_MAX_FILES", "1")
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("note", encoding="utf-8")
    code, _, err = run(capsys, "ingest", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--guild", "1")
    assert code == 2 and "2 files to ingest but the limit is 1" in err and "LOOPBOT_KB_MAX_FILES" in err


@pytest.mark.parametrize("argv", [["forget", "--user", "7"], ["ingest", "note.txt", "--guild", "1"]])
def test_second_cli_process_is_refused_while_the_store_is_owned(
    data_dir: Path, packaged_embeddings, argv
) -> None:
    from bot.settings import load_settings
    from bot.wiring import build_knowledge_base

    kb = build_knowledge_base(load_settings(), embeddings=packaged_embeddings)
    kb.claim()  # as the running bot does at start
    try:
        env = {**os.environ, "LOOPBOT_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
        (data_dir.parent / "note.txt").write_text("a note", encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "bot.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
            cwd=data_dir.parent,
        )
    finally:
        kb.close()
    assert done.returncode == 2, done.stderr
    assert f"another loopbot process (pid {os.getpid()}) owns {data_dir / 'chroma'}" in done.stderr
    assert "LOOPBOT_KB_CHROMA_HOST" in done.stderr


def test_ask_goes_through_the_chain(
    tmp_path: Path,
    data_dir: Path,
    tiny_gptq_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LOOPBOT_MODEL_BASE", str(tiny_gptq_dir))
    monkeypatch.setenv("LOOPBOT_MODEL_MAX_NEW_TOKENS", "4")
    # Every retrieved passage reaches the prompt: this test is about scopes, not the relevance floor.
    monkeypatch.setenv("LOOPBOT_KB_MIN_RELEVANCE", "0")
    monkeypatch.setenv("LOOPBOT_KB_RELEVANCE_MARGIN", "1")
    monkeypatch.setenv("LOOPBOT_KB_MAX_PASSAGES", "0")
    (tmp_path / "faq.md").write_text("Adult cats sleep 12 to 16 hours a day.", encoding="utf-8")
    (tmp_path / "mine.txt").write_text("Mochi sleeps on the heater every night.", encoding="utf-8")
    assert run(capsys, "ingest", str(tmp_path / "faq.md"), "--guild", "100", "--no-progress")[0] == 0
    assert (
        run(
            capsys,
            "ingest",
            str(tmp_path / "mine.txt"),
            "--guild",
            "100",
            "--scope",
            "personal",
            "--owner",
            "7",
            "--no-progress",
        )[0]
        == 0
    )

    code, out, _ = run(capsys, "ask", "Where does Mochi sleep?", "--json", "--user", "7", "--guild", "100")
    result = json.loads(out)
    assert code == 0 and set(result) == {"answer", "sources", "adapter"} and result["adapter"] is None
    assert [s["text"] for s in result["sources"]][0] == "Mochi sleeps on the heater every night."
    assert {s["scope"] for s in result["sources"]} == {"personal", "community"}
    assert set(result["sources"][0]) == {"id", "source", "scope", "text"}

    code, out, _ = run(capsys, "ask", "Where does Mochi sleep?", "--json", "--user", "8", "--guild", "100")
    # Not member 7's record; and the community post does not name Mochi, so nothing is cited at all.
    assert json.loads(out)["sources"] == []
    code, out, _ = run(
        capsys, "ask", "How long do adult cats sleep?", "--json", "--user", "8", "--guild", "100"
    )
    assert [s["scope"] for s in json.loads(out)["sources"]] == ["community"]
    code, out, _ = run(capsys, "ask", "How long do adult cats sleep?", "--guild", "100")
    assert code == 0 and "[1] faq.md (community): Adult cats sleep" in out
