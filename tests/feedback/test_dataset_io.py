"""Alpaca export and tolerant import, round-tripped through a real feedback log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback.dataset import eval_path, export_alpaca, read_dataset
from feedback.errors import FeedbackError
from feedback.log import FeedbackLog


def _log_with_pairs(path: Path, questions: int = 30) -> FeedbackLog:
    log = FeedbackLog(path)
    for n in range(questions):
        answer_id = log.record_answer(
            guild_id="g",
            channel_id="c",
            user_id=f"u{n}",
            question=f"Question {n}? ünïcode 🐱",
            context=f"[1] passage {n}",
            chunk_ids=[f"k{n}"],
            prompt="p",
            prompt_version="v1",
            adapter=None,
            answer=f"Answer {n}.",
        )
        log.set_vote(answer_id, "voter", 1 if n % 3 else -1, True)
    return log


def test_export_import_round_trip(tmp_path: Path) -> None:
    source = _log_with_pairs(tmp_path / "a.db")
    pairs = source.pairs()
    out = tmp_path / "export" / "pairs.json"
    report = export_alpaca(pairs, out, eval_fraction=0.25)
    assert report.eval_path == tmp_path / "export" / "pairs.eval.json" == eval_path(out)
    train = json.loads(out.read_text(encoding="utf-8"))
    held_out = json.loads(report.eval_path.read_text(encoding="utf-8"))
    assert (len(train), len(held_out)) == (report.train, report.eval)
    assert len(train) + len(held_out) == len(pairs) == 20  # negatives (every third) not exported
    assert held_out and all(set(r) == {"instruction", "input", "output"} for r in train + held_out)
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in held_out}

    target = FeedbackLog(tmp_path / "b.db")
    for path in (out, report.eval_path):
        read = read_dataset(path)
        assert read.problems == []
        assert target.import_pairs(read.rows, source=path.name).imported == len(read.rows)

    def rows(items: list) -> list[tuple[str, ...]]:
        return sorted(tuple(p.to_alpaca().values()) for p in items)

    assert rows(target.pairs()) == rows(pairs)
    source.close()
    target.close()


def test_export_without_fraction_writes_one_file(tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    report = export_alpaca([{"instruction": "Q?", "input": "", "output": "A."}], out)
    assert report.eval_path is None and not eval_path(out).exists()
    assert json.loads(out.read_text()) == [{"instruction": "Q?", "input": "", "output": "A."}]


def test_jsonl_bad_rows_are_reported_with_line_numbers_and_the_rest_kept(tmp_path: Path) -> None:
    lines = [
        json.dumps({"question": "How old is Mochi?", "answer": "Three."}),
        "{not json",
        json.dumps({"question": "No answer here"}),
        "",
        json.dumps(["a", "list"]),
        json.dumps({"instruction": "Feed?", "input": "ctx", "output": "Twice a day."}),
        json.dumps({"prompt": "Vet?", "response": 42}),
        json.dumps({"question": "   ", "answer": "blank question"}),
        json.dumps({"query": "Toy?", "context": "c", "completion": "A mouse."}),
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    read = read_dataset(path)
    assert read.rows == [
        {"instruction": "How old is Mochi?", "input": "", "output": "Three."},
        {"instruction": "Feed?", "input": "ctx", "output": "Twice a day."},
        {"instruction": "Toy?", "input": "c", "output": "A mouse."},
    ]
    assert [p.split(":")[0] for p in read.problems] == ["line 2", "line 3", "line 5", "line 7", "line 8"]
    assert "invalid JSON" in read.problems[0]
    assert "no output" in read.problems[1]
    assert "must be text" in read.problems[3]


def test_alpaca_array_bad_items_are_reported_by_index(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(
        json.dumps([{"instruction": "Q?", "output": "A."}, {"output": "orphan"}, 7]), encoding="utf-8"
    )
    read = read_dataset(path)
    assert read.rows == [{"instruction": "Q?", "input": "", "output": "A."}]
    assert [p.split(":")[0] for p in read.problems] == ["item 2", "item 3"]


def test_unreadable_files_raise_feedback_errors(tmp_path: Path) -> None:
    with pytest.raises(FeedbackError, match="does not exist"):
        read_dataset(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "Q?",\n "output": }]', encoding="utf-8")
    with pytest.raises(FeedbackError, match="line 2"):
        read_dataset(broken)


def test_a_pretty_printed_single_object_is_one_record_or_a_clear_error(tmp_path: Path) -> None:
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"question": "Q?", "answer": "A."}, indent=2), encoding="utf-8")
    assert read_dataset(one).rows == [{"instruction": "Q?", "input": "", "output": "A."}]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [{"question": "Q?", "answer": "A."}]}, indent=2), encoding="utf-8")
    with pytest.raises(FeedbackError, match="one JSON object, not a dataset"):
        read_dataset(wrapped)
