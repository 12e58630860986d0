"""The feedback use cases (bot/usecases/feedback.py) on real parts: temp-dir Chroma, temp SQLite."""

from __future__ import annotations

from bot.usecases import feedback as feedback_uc
from tests.bot.usecases.conftest import ASKER, GUILD, STRANGER


def test_a_trusted_correction_is_published_through_ingest(kb, log, answer_in) -> None:
    answer = answer_in()
    outcome = feedback_uc.correct(
        log,
        kb,
        answer,
        author_id=ASKER,
        text="Kittens eat four small meals a day.",
        message_id="9001",
        trusted=feedback_uc.trusted_author(answer, ASKER, holds_curator_role=False),
        votes_needed=3,
        private=False,
    )
    assert outcome.newly_accepted and outcome.correction.accepted
    hits = kb.search("how many meals do kittens eat", guild_id=GUILD, user_id=None, k=3)
    top = hits[0].chunk
    assert top.source == f"correction #{outcome.correction.id}" and top.scope == "community"
    assert "four small meals" in top.text and top.author == ASKER


def test_a_strangers_correction_waits_for_votes_and_the_authors_vote_does_not_count(
    kb, log, answer_in
) -> None:
    answer = answer_in()
    outcome = feedback_uc.correct(
        log, kb, answer, author_id=STRANGER, text="Three meals.", message_id="9002",
        trusted=False, votes_needed=1, private=False,
    )  # fmt: skip
    assert not outcome.correction.accepted
    assert kb.search("meals", guild_id=GUILD, user_id=None, k=3) == []
    own = feedback_uc.vote_on_correction(
        log, kb, outcome.correction, answer, voter_id=STRANGER, present=True, trusted=False,
        votes_needed=1, private=False,
    )  # fmt: skip
    assert own is None
    voted = feedback_uc.vote_on_correction(
        log, kb, outcome.correction, answer, voter_id=ASKER, present=True, trusted=False,
        votes_needed=1, private=False,
    )  # fmt: skip
    assert voted is not None and voted.newly_accepted
    assert [h.chunk.source for h in kb.search("meals", guild_id=GUILD, user_id=None, k=3)] == [
        f"correction #{outcome.correction.id}"
    ]


def test_a_private_correction_becomes_the_askers_own_record(kb, log, answer_in) -> None:
    answer = answer_in()
    feedback_uc.correct(
        log, kb, answer, author_id=ASKER, text="Mochi eats at 7 am.", message_id=None,
        trusted=True, votes_needed=3, private=True,
    )  # fmt: skip
    assert kb.search("when does Mochi eat", guild_id=GUILD, user_id=None, k=3) == []
    mine = kb.search("when does Mochi eat", guild_id=GUILD, user_id=ASKER, k=3)
    assert mine and mine[0].chunk.scope == "personal" and mine[0].chunk.owner_id == ASKER


def test_a_correction_of_a_dm_answer_is_recorded_without_a_post(kb, log, answer_in) -> None:
    answer = answer_in(guild="")
    outcome = feedback_uc.correct(
        log, kb, answer, author_id=ASKER, text="Four meals.", message_id=None,
        trusted=True, votes_needed=3, private=True,
    )  # fmt: skip
    assert (
        outcome.correction.accepted
        and feedback_uc.correction_chunks(outcome.correction, answer, private=True) == []
    )
    assert kb.stats()["community_chunks"] == 0 and kb.stats()["personal_records"] == 0


def test_toggle_vote_records_then_takes_back(log, answer_in) -> None:
    answer = answer_in()
    assert feedback_uc.toggle_vote(log, answer.id, STRANGER, 1) is True
    assert log.get_answer(answer.id).upvotes == 1
    assert feedback_uc.toggle_vote(log, answer.id, STRANGER, 1) is False
    assert log.get_answer(answer.id).upvotes == 0
