"""`loopbot dataset export|import` and `loopbot feedback stats`, run through the real CLI entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bot.cli import main
from feedback.log import FeedbackLog


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty data dir in LOOPBOT_DATA_DIR; run in a directory without a .env."""
    for name in list(os.environ):
        if name.startswith("LOOPBOT_"):
            monkeypatch.delenv(name)
    data = tmp_path / "data"
    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    return data


def _seed(data_dir: Path) -> None:
    log = FeedbackLog(data_dir / "loopbot.db")
    for n in range(10):
        answer_id = log.record_answer(
            guild_id="g1" if n < 6 else "g2",
            channel_id="c",
            user_id="u",
            question=f"Q{n}?",
            context="ctx",
            chunk_ids=[],
            prompt="p",
            prompt_version="v1",
            adapter=None,
            answer=f"A{n}.",
        )
        log.set_vote(answer_id, "v", 1 if n < 8 else -1, True)
    log.add_correction(1, author_id="u", text="Better A0.", message_id=None, trusted=True)
    log.close()


def test_export_writes_train_and_eval_files(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(data_dir)
    out = tmp_path / "out" / "pairs.json"
    code = main(["dataset", "export", "--format", "alpaca", "--out", str(out), "--eval-fraction", "0.3"])
    printed = capsys.readouterr().out
    assert code == 0
    train = json.loads(out.read_text(encoding="utf-8"))
    held_out = json.loads((tmp_path / "out" / "pairs.eval.json").read_text(encoding="utf-8"))
    assert len(train) + len(held_out) == 8  # 7 positive + 1 corrected; the 2 negatives stay out
    assert held_out and train
    assert {"instruction": "Q0?", "input": "ctx", "output": "Better A0."} in train + held_out
    assert "pairs.eval.json" in printed

    negatives = tmp_path / "neg.json"
    assert main(["dataset", "export", "--out", str(negatives), "--kinds", "negative"]) == 0
    assert [r["instruction"] for r in json.loads(negatives.read_text())] == ["Q8?", "Q9?"]

    # Q9's 👎 answer gets a correction: one preference record, chosen = correction, rejected = answer
    log = FeedbackLog(data_dir / "loopbot.db")
    log.add_correction(10, author_id="curator", text="Right A9.", message_id=None, trusted=True)
    log.close()
    preference = tmp_path / "pref.json"
    assert main(["dataset", "export", "--format", "preference", "--out", str(preference)]) == 0
    assert json.loads(preference.read_text()) == [
        {"instruction": "Q9?", "input": "ctx", "chosen": "Right A9.", "rejected": "A9."}
    ]


def test_import_reports_bad_lines_and_keeps_the_rest(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "seed.jsonl"
    path.write_text(
        '{"question": "Q?", "answer": "A."}\n{oops\n{"question": "Only a question"}\n', encoding="utf-8"
    )
    assert main(["dataset", "import", str(path)]) == 0
    captured = capsys.readouterr()
    assert "line 2: invalid JSON" in captured.err and "line 3: no output" in captured.err
    assert "imported 1 pairs" in captured.out and "2 bad rows skipped" in captured.out

    assert main(["dataset", "import", str(path)]) == 0
    again = capsys.readouterr().out
    assert "imported 0 pairs" in again and "1 already present" in again
    log = FeedbackLog(data_dir / "loopbot.db")
    assert [(p.instruction, p.source) for p in log.pairs()] == [("Q?", "seed.jsonl")]
    log.close()


def test_imported_facts_are_taught_to_the_server_or_member_named(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An owner's Alpaca file: each row a taught pair (learned like a correction) unless it says its
    kind; --guild teaches that server only, --member that member only (private, forgotten with them)."""
    path = tmp_path / "club.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": "What is the wifi password?", "input": "", "output": "heron42"},
                {"instruction": "Is the bot nice?", "output": "Yes.", "kind": "positive"},
            ]
        ),
        encoding="utf-8",
    )
    assert main(["dataset", "import", str(path), "--guild", "g1"]) == 0
    out = capsys.readouterr().out
    assert "imported 2 pairs" in out and "server g1's adapter" in out and "loopbot train --guild g1" in out
    assert main(["dataset", "import", str(path), "--guild", "g2"]) == 0  # the same file teaches g2 too
    assert "imported 2 pairs" in capsys.readouterr().out
    records = tmp_path / "alice.jsonl"
    records.write_text('{"question": "When is my vet visit?", "answer": "Tuesday at 9."}\n', encoding="utf-8")
    assert main(["dataset", "import", str(records), "--member", "alice"]) == 0
    assert "member alice's own adapter" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["dataset", "import", str(path), "--guild", "g1", "--member", "alice"])
    capsys.readouterr()

    log = FeedbackLog(data_dir / "loopbot.db")
    try:
        g1 = log.pairs(guild_id="g1")
        assert [(p.kind, p.guild_id) for p in g1] == [("taught", "g1"), ("positive", "g1")]
        assert {p.guild_id for p in log.pairs()} == {"g1", "g2"}  # shared data: never alice's
        (mine,) = log.pairs(owner_id="alice")
        assert (mine.kind, mine.instruction, mine.guild_id) == ("taught", "When is my vet visit?", None)
        assert log.forget_user("alice").pairs == 1
        assert log.pairs(owner_id="alice") == [] and len(log.pairs()) == 4
    finally:
        log.close()
    assert main(["dataset", "import", str(records), "--member", "alice"]) == 0
    assert "imported 0 pairs" in capsys.readouterr().out  # what she forgot does not come back


def test_import_of_a_file_without_usable_rows_exits_2(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"nothing": 1}\n', encoding="utf-8")
    assert main(["dataset", "import", str(path)]) == 2
    assert "no usable rows" in capsys.readouterr().err
    assert main(["dataset", "import", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_feedback_stats(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _seed(data_dir)
    assert main(["feedback", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["answers"], stats["upvotes"], stats["downvotes"], stats["accepted"]) == (10, 8, 2, 1)
    assert stats["pairs"] == {"positive": 7, "corrected": 1, "taught": 0, "negative": 2}
    assert main(["feedback", "stats", "--guild", "g2"]) == 0
    table = capsys.readouterr().out
    assert "guild g2" in table
    assert [line.split()[-1] for line in table.splitlines() if line.strip().startswith("answers")] == ["4"]


def test_feedback_queue_lists_pending_corrections(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["feedback", "queue"]) == 0
    assert "no corrections are waiting" in capsys.readouterr().out
    _seed(data_dir)
    log = FeedbackLog(data_dir / "loopbot.db")
    log.add_correction(3, author_id="stranger", text="It is  really\nA2-prime.", message_id="m", trusted=False,
                       votes_needed=3)  # fmt: skip
    log.close()
    assert main(["feedback", "queue"]) == 0
    out = capsys.readouterr().out
    assert "answer 3 by stranger, 0/3" in out
    assert "Q: Q2?" in out and "correction: It is really A2-prime." in out
    assert "Better A0." not in out  # accepted corrections are not in the queue
