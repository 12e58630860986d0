"""The feedback log on a real temp SQLite file: migrations, votes, corrections, pairs, forget, import."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feedback.errors import FeedbackError
from feedback.log import FeedbackLog
from feedback.migrations import MIGRATIONS


@pytest.fixture
def log(tmp_path: Path) -> Iterator[FeedbackLog]:
    feedback_log = FeedbackLog(tmp_path / "data" / "loopbot.db")
    yield feedback_log
    feedback_log.close()


def ask(
    log: FeedbackLog,
    question: str = "Why does Mochi sneeze?",
    *,
    user: str = "asker",
    guild: str = "g1",
    answer: str = "Mochi has a mild cold.",
    messages: tuple[str, ...] = (),
) -> int:
    return log.record_answer(
        guild_id=guild,
        channel_id="c1",
        user_id=user,
        question=question,
        context="[1] Mochi sneezed twice a day in March.",
        chunk_ids=["post-1", "rec-7"],
        prompt="<prompt>",
        prompt_version="v1",
        adapter=None,
        answer=answer,
        message_ids=messages,
    )


def kinds(log: FeedbackLog) -> list[str]:
    return sorted(p.kind for p in log.pairs(kinds=("positive", "corrected", "negative")))


# ---- migrations ------------------------------------------------------------------------------------


def test_migrations_apply_once_and_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "fb.db"
    first = FeedbackLog(path)
    assert first.db.applied == [fn.__name__ for fn in MIGRATIONS]
    assert first.db.applied[:2] == ["m001_initial", "m002_forget_ledger"]
    ask(first)
    first.close()

    second = FeedbackLog(path)
    assert second.db.applied == []  # nothing re-applied, data kept
    assert second.stats().answers == 1
    second.close()

    conn = sqlite3.connect(path)
    recorded = [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert recorded == [fn.__name__ for fn in MIGRATIONS]
    assert journal == "wal"


def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fb.db"
    FeedbackLog(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO _migrations (name, applied_at) VALUES ('m999_future', 'now')")
    conn.commit()
    conn.close()
    with pytest.raises(FeedbackError, match="newer version"):
        FeedbackLog(path)


def test_a_file_that_is_not_a_database_gives_a_feedback_error(tmp_path: Path) -> None:
    path = tmp_path / "fb.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FeedbackError, match="Move it away"):
        FeedbackLog(path)


def test_a_directory_in_the_way_gives_a_feedback_error(tmp_path: Path) -> None:
    (tmp_path / "fb.db").mkdir()
    with pytest.raises(FeedbackError, match="feedback database"):
        FeedbackLog(tmp_path / "fb.db")


# ---- answers ---------------------------------------------------------------------------------------


def test_answer_is_found_by_any_of_its_messages(log: FeedbackLog) -> None:
    answer_id = ask(log, messages=("m1",))
    log.add_message_ids(answer_id, ["m2", "m3"])
    log.add_message_ids(answer_id, ["m3"])  # repeating is harmless
    record = log.answer_for_message("m3")
    assert record is not None
    assert record.id == answer_id
    assert record.message_ids == ("m1", "m2", "m3")
    assert record.chunk_ids == ("post-1", "rec-7")
    assert record.created_at.tzinfo is not None
    assert log.answer_for_message("unknown") is None


def test_an_answer_is_committed_when_record_answer_returns(log: FeedbackLog) -> None:
    answer_id = ask(log, messages=("m1",))
    other = sqlite3.connect(log.path)  # another connection, as another process would see it
    assert other.execute("SELECT id, question FROM answers").fetchall() == [
        (answer_id, "Why does Mochi sneeze?")
    ]
    other.close()


def test_a_message_cannot_belong_to_two_answers(log: FeedbackLog) -> None:
    ask(log, messages=("m1",))
    other = ask(log, "Another question?")
    with pytest.raises(FeedbackError, match="already belongs to answer"):
        log.add_message_ids(other, ["m1"])


def test_a_failed_write_leaves_nothing_behind(log: FeedbackLog) -> None:
    ask(log, messages=("m1",))
    with pytest.raises(FeedbackError, match="already belongs"):
        ask(log, "Second?", messages=("m2", "m1"))  # the answer row was inserted before the clash
    assert log.stats().answers == 1
    assert log.answer_for_message("m2") is None


def test_empty_question_is_refused(log: FeedbackLog) -> None:
    with pytest.raises(FeedbackError, match="question is empty"):
        ask(log, "   ")


# ---- votes -----------------------------------------------------------------------------------------


def test_vote_add_repeat_remove_is_idempotent(log: FeedbackLog) -> None:
    answer_id = ask(log)
    first = log.set_vote(answer_id, "u2", 1, True)
    again = log.set_vote(answer_id, "u2", 1, True)
    assert (first.changed, again.changed) == (True, False)
    assert (again.upvotes, again.downvotes, again.positive) == (1, 0, True)
    [pair] = log.pairs()
    assert log.set_vote(answer_id, "u3", 1, True).positive
    assert [p.id for p in log.pairs()] == [pair.id]  # a pair that still holds keeps its id

    removed = log.set_vote(answer_id, "u2", 1, False)
    removed_again = log.set_vote(answer_id, "u2", 1, False)
    assert (removed.changed, removed_again.changed) == (True, False)
    assert removed_again.upvotes == 1
    log.set_vote(answer_id, "u3", 1, False)
    assert log.pairs() == []
    assert log.get_answer(answer_id).upvotes == 0  # type: ignore[union-attr]


def test_vote_on_unknown_answer_or_bad_value_is_an_error(log: FeedbackLog) -> None:
    with pytest.raises(FeedbackError, match="not in the feedback log"):
        log.set_vote(42, "u", 1, True)
    answer_id = ask(log)
    with pytest.raises(FeedbackError, match="1 .* or -1"):
        log.set_vote(answer_id, "u", 2, True)  # type: ignore[arg-type]


def test_positive_needs_more_up_than_down_and_negative_the_reverse(log: FeedbackLog) -> None:
    answer_id = ask(log)
    log.set_vote(answer_id, "a", 1, True)
    assert kinds(log) == ["positive"]
    [positive] = log.pairs()
    assert positive.to_alpaca() == {
        "instruction": "Why does Mochi sneeze?",
        "input": "[1] Mochi sneezed twice a day in March.",
        "output": "Mochi has a mild cold.",
    }
    assert (positive.user_id, positive.answer_id, positive.source) == ("asker", answer_id, "discord")

    log.set_vote(answer_id, "b", -1, True)
    assert kinds(log) == []  # a tie yields nothing
    result = log.set_vote(answer_id, "c", -1, True)
    assert (result.positive, result.negative) == (False, True)
    assert kinds(log) == ["negative"]


def test_negatives_are_never_training_pairs_by_default(log: FeedbackLog) -> None:
    good, bad = ask(log, "Good question?"), ask(log, "Bad question?", answer="Wrong.")
    log.set_vote(good, "u", 1, True)
    log.set_vote(bad, "u", -1, True)
    training = log.pairs()
    assert [p.instruction for p in training] == ["Good question?"]
    assert all(p.kind != "negative" for p in training)
    [negative] = log.pairs(kinds=("negative",))
    assert (negative.instruction, negative.output) == ("Bad question?", "Wrong.")
    with pytest.raises(FeedbackError, match="unknown pair kind"):
        log.pairs(kinds=("nonsense",))


def test_pairs_since(log: FeedbackLog) -> None:
    answer_id = ask(log)
    log.set_vote(answer_id, "u", 1, True)
    assert len(log.pairs(since=datetime.now(UTC) - timedelta(minutes=5))) == 1
    assert log.pairs(since=datetime.now(UTC) + timedelta(minutes=5)) == []
    naive_past = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
    assert len(log.pairs(since=naive_past)) == 1


# ---- corrections -----------------------------------------------------------------------------------


def test_correction_by_asker_or_curator_is_accepted_at_once(log: FeedbackLog) -> None:
    answer_id = ask(log)
    log.set_vote(answer_id, "u", 1, True)
    correction = log.add_correction(
        answer_id, author_id="asker", text=" It was an allergy. ", message_id="c1", trusted=True
    )
    assert correction.accepted and correction.status == "accepted"
    assert correction.text == "It was an allergy."
    [pair] = log.pairs()  # the correction supersedes the positive pair
    assert (pair.kind, pair.output, pair.author_id, pair.correction_id) == (
        "corrected",
        "It was an allergy.",
        "asker",
        correction.id,
    )
    assert log.correction_for_message("c1") == correction


def test_stranger_correction_needs_votes_from_others(log: FeedbackLog) -> None:
    answer_id = ask(log)
    correction = log.add_correction(
        answer_id, author_id="stranger", text="Allergy.", message_id="c1", trusted=False
    )
    assert not correction.accepted
    assert log.pairs() == []
    assert not log.set_correction_vote("c1", "stranger", True, votes_needed=2).accepted  # own vote: no
    assert log.set_correction_vote("c1", "v1", True, votes_needed=2).votes == 1
    assert log.set_correction_vote("c1", "v1", True, votes_needed=2).votes == 1  # repeated
    assert log.pairs() == []
    accepted = log.set_correction_vote(correction.id, "v2", True, votes_needed=2)
    assert accepted.accepted and accepted.accepted_at is not None
    assert [p.kind for p in log.pairs()] == ["corrected"]

    # withdrawing a 👍 below the threshold makes it pending again, and the pair goes with it
    assert not log.set_correction_vote("c1", "v2", False, votes_needed=2).accepted
    assert log.pairs() == []
    assert log.stats().pending == 1


def test_trusted_vote_accepts_a_stranger_correction(log: FeedbackLog) -> None:
    answer_id = ask(log)
    log.add_correction(answer_id, author_id="stranger", text="Allergy.", message_id="c1", trusted=False)
    assert log.set_correction_vote("c1", "asker", True, votes_needed=5, trusted=True).accepted


def test_latest_accepted_correction_wins_and_edits_update(log: FeedbackLog) -> None:
    answer_id = ask(log)
    log.add_correction(answer_id, author_id="asker", text="First.", message_id="c1", trusted=True)
    log.add_correction(answer_id, author_id="curator", text="Second.", message_id="c2", trusted=True)
    assert [p.output for p in log.pairs()] == ["Second."]
    log.add_correction(answer_id, author_id="curator", text="Second, edited.", message_id="c2", trusted=True)
    assert [p.output for p in log.pairs()] == ["Second, edited."]
    assert len(log.corrections(answer_id)) == 2


def test_correction_errors(log: FeedbackLog) -> None:
    with pytest.raises(FeedbackError, match="not in the feedback log"):
        log.add_correction(7, author_id="a", text="x", message_id=None, trusted=True)
    answer_id = ask(log)
    with pytest.raises(FeedbackError, match="correction is empty"):
        log.add_correction(answer_id, author_id="a", text="  ", message_id=None, trusted=True)
    with pytest.raises(FeedbackError, match="not in the feedback log"):
        log.set_correction_vote("nope", "u", True, votes_needed=1)
    assert log.correction_for_message("nope") is None


def test_pending_corrections_is_the_curators_queue(log: FeedbackLog) -> None:
    a, b = ask(log, "Q1?", guild="g1"), ask(log, "Q2?", guild="g2")
    first = log.add_correction(a, author_id="s1", text="One.", message_id="c1", trusted=False)
    second = log.add_correction(b, author_id="s2", text="Two.", message_id="c2", trusted=False)
    log.add_correction(b, author_id="asker", text="Three.", message_id="c3", trusted=True)
    assert [c.id for c in log.pending_corrections()] == [first.id, second.id]
    assert [c.id for c in log.pending_corrections("g2")] == [second.id]
    assert len(log.pending_corrections(limit=1)) == 1
    log.set_correction_vote("c1", "v", True, votes_needed=1)
    assert [c.id for c in log.pending_corrections()] == [second.id]


# ---- stats -----------------------------------------------------------------------------------------


def test_stats_count_everything_and_filter_by_guild(log: FeedbackLog) -> None:
    a = ask(log, "Q1?", guild="g1")
    b = ask(log, "Q2?", guild="g2")
    log.set_vote(a, "u1", 1, True)
    log.set_vote(a, "u2", 1, True)
    log.set_vote(b, "u1", -1, True)
    log.add_correction(b, author_id="x", text="Better.", message_id=None, trusted=False)
    log.add_correction(a, author_id="asker", text="Best.", message_id=None, trusted=True)
    log.import_pairs([{"instruction": "Seed?", "output": "Yes."}], source="seed")
    log.import_pairs(
        [{"instruction": "Two?", "output": "Yes.", "kind": "positive"}], source="s", guild_id="g2"
    )

    everything = log.stats()
    assert (everything.answers, everything.upvotes, everything.downvotes) == (2, 2, 1)
    assert (everything.corrections, everything.pending, everything.accepted) == (2, 1, 1)
    # a's 👍 pair gave way to the correction; the imports are taught unless they say their kind
    assert everything.pairs == {"positive": 1, "corrected": 1, "taught": 1, "negative": 1}
    g2 = log.stats("g2")
    assert (g2.answers, g2.upvotes, g2.downvotes, g2.pending, g2.accepted) == (1, 0, 1, 1, 0)
    assert g2.pairs == {"positive": 1, "corrected": 0, "taught": 0, "negative": 1}


# ---- forget ----------------------------------------------------------------------------------------


def test_forget_removes_the_members_data_and_ledgers_pair_ids(log: FeedbackLog) -> None:
    mine = ask(log, "My question?", user="alice", messages=("m-alice",))
    log.set_vote(mine, "bob", 1, True)
    others = ask(log, "Bob's question?", user="bob")
    log.set_vote(others, "alice", 1, True)  # alice's vote made bob's positive pair
    corrected = ask(log, "Carol's question?", user="carol")
    log.set_vote(corrected, "dave", 1, True)
    log.add_correction(corrected, author_id="alice", text="Alice knows.", message_id="c-alice", trusted=True)
    before = {p.id: p for p in log.pairs(kinds=("positive", "corrected", "negative"))}
    alice_pairs = {pid for pid, p in before.items() if "alice" in (p.user_id, p.author_id)}
    assert len(alice_pairs) == 2

    report = log.forget_user("alice")
    assert (report.answers, report.corrections, report.votes) == (1, 1, 1)
    assert set(report.pair_ids) == alice_pairs and report.pairs == 2
    assert log.forgotten_pair_ids() == alice_pairs
    assert log.answer_for_message("m-alice") is None
    assert log.correction_for_message("c-alice") is None

    after = log.pairs(kinds=("positive", "corrected", "negative"))
    assert all("alice" not in (p.user_id, p.author_id) for p in after)
    # bob's answer lost its only 👍 (alice's); carol's answer falls back to its positive pair
    assert [(p.user_id, p.kind, p.output) for p in after] == [("carol", "positive", "Mochi has a mild cold.")]
    assert not set(p.id for p in after) & alice_pairs  # ids are never reused
    assert log.forget_user("alice").pairs == 0  # forgetting twice is harmless
    assert log.forgotten_pair_ids() == alice_pairs


def test_forgotten_content_cannot_come_back_through_import(log: FeedbackLog) -> None:
    mine = ask(log, "My question?", user="alice")
    log.set_vote(mine, "bob", 1, True)
    exported = [p.to_alpaca() for p in log.pairs()]
    log.forget_user("alice")
    report = log.import_pairs(exported, source="old-export.json")
    assert (report.imported, report.forgotten) == (0, 1)
    assert log.pairs() == []


# ---- import ----------------------------------------------------------------------------------------


def test_import_keeps_good_rows_reports_bad_ones_and_skips_duplicates(log: FeedbackLog) -> None:
    rows = [
        {"instruction": "Q1?", "input": "", "output": "A1."},
        {"instruction": "Q2?", "output": "A2."},
        {"instruction": "", "output": "A3."},
        {"instruction": "Q4?"},
        "not a dict",
        {"instruction": "Q5?", "output": "Bad.", "kind": "negative"},
        {"instruction": "Q6?", "output": "A6.", "kind": "weird"},
    ]
    report = log.import_pairs(rows, source="seed.jsonl")  # type: ignore[arg-type]
    assert (report.imported, report.duplicates) == (3, 0)
    assert [line.split(":")[0] for line in report.problems] == ["row 3", "row 4", "row 5", "row 7"]
    assert "'instruction' is empty" in report.problems[0]
    assert [(p.instruction, p.source, p.user_id) for p in log.pairs()] == [
        ("Q1?", "seed.jsonl", None),
        ("Q2?", "seed.jsonl", None),
    ]
    assert log.import_pairs(rows[:2], source="again").duplicates == 2  # type: ignore[arg-type]


def test_exclude_forgotten_drops_pairs_identical_to_forgotten_ones(log: FeedbackLog) -> None:
    # Same question, same retrieved context, same answer: the text is exactly what was forgotten.
    alice = ask(log, "Shared question?", user="alice")
    log.set_vote(alice, "v", 1, True)
    log.forget_user("alice")
    bob = ask(log, "Shared question?", user="bob")
    log.set_vote(bob, "v", 1, True)
    assert log.pairs() == []
    assert [p.user_id for p in log.pairs(exclude_forgotten=False)] == ["bob"]
