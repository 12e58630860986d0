"""Members in control, below Discord: learning consent, a server's learning switch, retention, the
member export and its CLI (``loopbot member``, ``loopbot feedback retention|stats``)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.usecases.privacy import learning_refusal
from feedback import privacy
from feedback.errors import FeedbackError
from feedback.log import FeedbackLog
from feedback.migrations import MIGRATIONS

GUILD, OTHER_GUILD = "1001", "1002"
ALICE, BOB, CAROL = "11", "22", "33"


@pytest.fixture
def log(tmp_path: Path) -> FeedbackLog:
    feedback_log = FeedbackLog(tmp_path / "loopbot.db")
    yield feedback_log
    feedback_log.close()


def ask(log: FeedbackLog, user: str, question: str, guild: str = GUILD) -> int:
    return log.record_answer(
        guild_id=guild, channel_id="c", user_id=user, question=question, context="ctx", chunk_ids=[],
        prompt="p", prompt_version="t", adapter=None, answer=f"answer to {question}",
    )  # fmt: skip


def questions(log: FeedbackLog) -> set[str]:
    return {p.instruction for p in log.pairs(kinds=("positive", "corrected", "taught", "negative"))}


def test_learning_off_withdraws_every_pair_of_the_member_and_makes_no_new_one(log: FeedbackLog) -> None:
    hers = ask(log, ALICE, "alice asks?")
    his = ask(log, BOB, "bob asks?")
    voted_by_two = ask(log, BOB, "bob again?")
    log.set_vote(hers, CAROL, 1, True)  # her question
    log.set_vote(his, ALICE, 1, True)  # only her vote
    log.set_vote(voted_by_two, ALICE, 1, True)
    log.set_vote(voted_by_two, CAROL, 1, True)  # her vote and Carol's
    log.add_correction(his, author_id=ALICE, text="alice's fix", message_id="m1", trusted=True)
    log.import_pairs([{"instruction": "alice taught?", "output": "yes"}], source="f", owner_id=ALICE)
    before = {p.instruction: p.id for p in log.pairs()} | {
        p.instruction: p.id for p in log.pairs(owner_id=ALICE)
    }
    assert set(before) == {"alice asks?", "bob asks?", "bob again?", "alice taught?"}

    change = privacy.set_member_learning(log, ALICE, False)

    # Pairs holding her question, her correction or only her vote left, and are ledgered for the adapters;
    # a pair Carol's vote alone makes stays, with its id (an adapter trained on it keeps being served).
    assert questions(log) == {"bob again?"} and log.pairs()[0].id == before["bob again?"]
    assert log.pairs(owner_id=ALICE) == []
    withdrawn = {before["alice asks?"], before["bob asks?"], before["alice taught?"]}
    assert set(change.withdrawn_pair_ids) == withdrawn <= log.forgotten_pair_ids()
    assert log.stats().withdrawn_pairs == 3 and log.stats().forgotten_pairs == 0
    # From then on: her question, her vote, her correction make nothing; Bob's own still do.
    later = ask(log, ALICE, "alice later?")
    log.set_vote(later, BOB, 1, True)
    fresh = ask(log, BOB, "bob fresh?")
    log.set_vote(fresh, ALICE, 1, True)
    log.add_correction(fresh, author_id=ALICE, text="alice corrects", message_id="m2", trusted=True)
    assert questions(log) == {"bob again?"}
    log.set_vote(fresh, CAROL, 1, True)
    assert questions(log) == {"bob again?", "bob fresh?"}
    assert {p.kind for p in log.pairs() if p.instruction == "bob fresh?"} == {"positive"}  # not her fix
    assert learning_refusal(log, None, ALICE) == f"member {ALICE} turned learning off"
    assert not privacy.set_member_learning(log, ALICE, False).changed  # already off


def test_learning_on_again_starts_afresh(log: FeedbackLog) -> None:
    old = ask(log, ALICE, "before?")
    log.set_vote(old, BOB, 1, True)
    privacy.set_member_learning(log, ALICE, False)
    during = ask(log, ALICE, "while off?")

    assert privacy.set_member_learning(log, ALICE, True).changed
    log.set_vote(during, BOB, 1, True)  # a vote now on a question asked while off
    log.set_vote(old, CAROL, 1, True)  # a new vote on a question from before
    now = ask(log, ALICE, "after?")
    log.set_vote(now, BOB, 1, True)

    assert questions(log) == {"after?"}  # nothing from before comes back
    assert privacy.member_learning(log, ALICE).on and learning_refusal(log, GUILD, ALICE) == ""


def test_a_correction_accepted_only_by_a_non_learning_voter_makes_no_pair(log: FeedbackLog) -> None:
    answer = ask(log, BOB, "bob asks?")
    log.add_correction(answer, author_id=CAROL, text="carol's fix", message_id="m", trusted=False)
    privacy.set_member_learning(log, ALICE, False)

    accepted = log.set_correction_vote("m", ALICE, True, votes_needed=1)

    assert accepted.accepted  # still accepted: it becomes a post, which is knowledge, not training
    assert log.pairs() == []
    log.set_correction_vote("m", BOB, True, votes_needed=1)
    assert [p.output for p in log.pairs()] == ["carol's fix"]


def test_a_server_switched_off_makes_no_pair_and_runs_no_training(log: FeedbackLog) -> None:
    kept = ask(log, ALICE, "kept?")
    log.set_vote(kept, BOB, 1, True)
    elsewhere = ask(log, ALICE, "other server?", guild=OTHER_GUILD)

    assert privacy.set_guild_learning(log, GUILD, False)
    asked_while_off = ask(log, BOB, "while off?")
    log.set_vote(asked_while_off, CAROL, 1, True)
    log.set_vote(kept, CAROL, -1, True)  # a vote while off changes nothing learned
    log.set_vote(elsewhere, BOB, 1, True)  # another server learns as before

    assert questions(log) == {"kept?", "other server?"}  # pairs made before stay
    assert {p.kind for p in log.pairs(kinds=("positive", "negative")) if p.instruction == "kept?"} == {
        "positive"
    }
    assert "learning is off in server 1001" in learning_refusal(log, GUILD, None)
    assert learning_refusal(log, OTHER_GUILD, None) == ""
    assert not privacy.guild_learning(log, GUILD) and privacy.guild_learning(log, OTHER_GUILD)

    assert privacy.set_guild_learning(log, GUILD, True) and not privacy.set_guild_learning(log, GUILD, True)
    log.set_vote(asked_while_off, BOB, 1, True)  # a vote now, on a question asked while off
    after = ask(log, BOB, "after?")
    log.set_vote(after, CAROL, 1, True)
    assert questions(log) == {"kept?", "other server?", "after?"}  # nothing done while off is learned


def _age(log: FeedbackLog, answer_id: int, days: int) -> None:
    moment = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds")
    with log.db.transaction() as conn:
        conn.execute("UPDATE answers SET created_at = ? WHERE id = ?", (moment, answer_id))


def test_retention_deletes_only_old_answers_nobody_voted_on_or_corrected(log: FeedbackLog) -> None:
    old_unvoted = ask(log, ALICE, "Zorblat old unvoted?")
    old_voted = ask(log, ALICE, "old voted?")
    old_corrected = ask(log, ALICE, "old corrected?")
    old_pending = ask(log, ALICE, "old pending correction?")
    vote_withdrawn = ask(log, ALICE, "Zorblat vote taken back?", guild="")
    recent = ask(log, ALICE, "recent unvoted?")
    log.add_message_ids(old_unvoted, ["900"])
    log.set_vote(old_voted, BOB, -1, True)
    log.add_correction(old_corrected, author_id=ALICE, text="fix", message_id=None, trusted=True)
    log.add_correction(old_pending, author_id=BOB, text="maybe", message_id=None, trusted=False)
    log.set_vote(vote_withdrawn, BOB, 1, True)
    log.set_vote(vote_withdrawn, BOB, 1, False)
    log.import_pairs([{"instruction": "taught?", "output": "yes"}], source="f")
    for answer_id in (old_unvoted, old_voted, old_corrected, old_pending, vote_withdrawn):
        _age(log, answer_id, 40)
    pairs_before = log.pairs(kinds=("positive", "corrected", "taught", "negative"))

    report = privacy.apply_retention(log, 30)

    assert report.answers == 2 and report.by_guild == {GUILD: 1, "": 1}
    assert log.get_answer(old_unvoted) is None and log.get_answer(vote_withdrawn) is None
    assert log.answer_for_message("900") is None
    assert all(log.get_answer(a) is not None for a in (old_voted, old_corrected, old_pending, recent))
    assert log.pairs(kinds=("positive", "corrected", "taught", "negative")) == pairs_before
    assert b"Zorblat" not in log.path.read_bytes()  # scrubbed, as a forget scrubs
    assert (log.stats().retention_removed, log.stats(GUILD).retention_removed) == (2, 1)
    assert privacy.apply_retention(log, 30).answers == 0 and privacy.apply_retention(log, 0).answers == 0


def test_forget_keeps_a_members_no_but_forgets_their_notes(log: FeedbackLog) -> None:
    assert privacy.take_notice(log, GUILD, ALICE) and not privacy.take_notice(log, GUILD, ALICE)
    privacy.set_member_learning(log, ALICE, False)
    privacy.take_notice(log, GUILD, BOB)
    privacy.set_member_learning(log, BOB, False)
    privacy.set_member_learning(log, BOB, True)

    log.forget_user(ALICE)
    log.forget_user(BOB)

    assert not privacy.member_learning(log, ALICE).on  # their "don't learn from me" stays in force
    assert privacy.member_learning(log, BOB) == privacy.Learning(True)
    assert not privacy.noticed(log, GUILD, ALICE) and not privacy.noticed(log, GUILD, BOB)


def test_the_export_holds_the_members_rows_and_no_words_of_anyone_else(log: FeedbackLog) -> None:
    hers = ask(log, ALICE, "Alicemark question?")
    his = ask(log, BOB, "Bobmark question?")
    log.set_vote(hers, BOB, 1, True)
    log.set_vote(his, ALICE, 1, True)
    log.add_correction(his, author_id=ALICE, text="Alicemark fix of bob", message_id="m1", trusted=False)
    log.add_correction(hers, author_id=BOB, text="Bobmark fix of alice", message_id="m2", trusted=False)
    log.set_correction_vote("m2", ALICE, True, votes_needed=1)  # her 👍 accepts Bob's fix of her answer
    log.set_correction_vote("m1", CAROL, True, votes_needed=1)
    privacy.take_notice(log, GUILD, ALICE)

    rows = privacy.member_rows(log, ALICE)

    conn = sqlite3.connect(log.path)
    expected = {
        "answers": conn.execute("SELECT COUNT(*) FROM answers WHERE user_id = ?", (ALICE,)).fetchone()[0],
        "votes": conn.execute("SELECT COUNT(*) FROM votes WHERE user_id = ?", (ALICE,)).fetchone()[0],
        "corrections": conn.execute(
            "SELECT COUNT(*) FROM corrections WHERE author_id = ?", (ALICE,)
        ).fetchone()[0],
        "correction_votes": conn.execute(
            "SELECT COUNT(*) FROM correction_votes WHERE user_id = ?", (ALICE,)
        ).fetchone()[0],
        "privacy_notes_shown": 1,
    }
    conn.close()
    assert {key: len(rows[key]) for key in expected} == expected == {
        "answers": 1, "votes": 1, "corrections": 1, "correction_votes": 1, "privacy_notes_shown": 1
    }  # fmt: skip
    # Her answer's pair (her question) and the pair of her fix of Bob's answer: theirs by id, hers in words.
    by_kind = {(p["answer_id"], p["kind"]): p for p in rows["pairs"]}
    mine, fix = by_kind[(hers, "corrected")], by_kind[(his, "corrected")]
    assert mine["instruction"] == "Alicemark question?" and mine["output"] is None  # Bob wrote that fix
    assert fix["instruction"] is None and fix["output"] == "Alicemark fix of bob"
    assert "Bobmark" not in json.dumps(rows)
    assert "Alicemark" not in json.dumps(privacy.member_rows(log, BOB))
    assert privacy.member_counts(log, ALICE, GUILD)["shared_pairs"] == len(rows["pairs"]) == 2
    assert privacy.member_counts(log, ALICE, "")["answers"] == 0


def test_an_old_log_migrates_and_forgotten_pairs_stay_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "loopbot.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    for fn in MIGRATIONS[:4]:
        fn(conn)
        conn.execute("INSERT INTO _migrations VALUES (?, 'then')", (fn.__name__,))
    conn.execute("INSERT INTO forget_ledger VALUES (7, 'positive', 'h', 'then')")
    conn.close()

    log = FeedbackLog(path)
    try:
        assert log.db.applied == ["m005_member_control"]
        assert log.forgotten_pair_ids() == {7} and log.stats().forgotten_pairs == 1
        assert privacy.member_learning(log, ALICE).on and privacy.guild_learning(log, GUILD)
    finally:
        log.close()


# ---- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(data))
    monkeypatch.setenv("LOOPBOT_PRIVACY_RETENTION_DAYS", "30")
    seeded = FeedbackLog(data / "loopbot.db")
    hers = ask(seeded, ALICE, "Alicemark cli?")
    seeded.set_vote(hers, BOB, 1, True)
    _age(seeded, ask(seeded, BOB, "Bobmark old?"), 31)
    seeded.close()
    return data


def test_cli_member_show_and_export(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    assert main(["member", "show", "--user", ALICE, "--guild", GUILD]) == 0
    shown = capsys.readouterr().out
    assert "In this server: 1 answer to your questions · 1 shared training pair" in shown
    assert "Learning from you: on" in shown

    out = tmp_path / "alice.json"
    assert main(["member", "export", "--user", ALICE, "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["member"] == ALICE and [a["question"] for a in data["answers"]] == ["Alicemark cli?"]
    assert "Bobmark" not in out.read_text(encoding="utf-8")


def test_cli_member_says_what_to_do_with_a_bad_or_unknown_id(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    assert main(["member", "export", "--user", "alice"]) == 2
    assert "not a Discord user id" in capsys.readouterr().err
    assert main(["member", "show", "--user", "999"]) == 2
    assert "holds nothing about member 999" in capsys.readouterr().err


def test_cli_retention_and_stats(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli import main

    assert main(["feedback", "retention"]) == 0
    assert "deleted 1 answer(s) older than 30 days" in capsys.readouterr().out
    assert main(["feedback", "stats"]) == 0
    out = capsys.readouterr().out
    assert "retention removed        1" in out and "deleted after 30 days" in out
    assert main(["feedback", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["retention_removed"] == 1


def test_privacy_errors_are_feedback_errors() -> None:
    from bot.usecases.privacy import check_member_id

    with pytest.raises(FeedbackError):
        check_member_id("<@123>")
    assert check_member_id(" 123 ") == "123"
