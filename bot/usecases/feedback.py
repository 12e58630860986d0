"""Feedback: votes on answers and corrections, and what an accepted correction becomes.

A correction is accepted at once when its author is trusted (the asker, a curator or an admin:
the front end says whether the author holds such a role), otherwise after ``votes_needed`` 👍
from other members. An accepted correction becomes a post in the knowledge base, retrievable by
the very next question. Every record is durable before these functions return.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from feedback.log import FeedbackLog
    from feedback.records import AnswerRecord, CorrectionRecord
    from knowledge.store import KnowledgeBase
    from knowledge.types import Chunk


def trusted_author(answer: AnswerRecord, user_id: str, *, holds_curator_role: bool) -> bool:
    """The asker, curators and admins correct an answer without needing votes."""
    return user_id == answer.user_id or holds_curator_role


def toggle_vote(log: FeedbackLog, answer_id: int, user_id: str, value: Literal[1, -1]) -> bool:
    """A vote button: the first press records the vote, a second press takes it back.

    True when the vote is now recorded, False when it was taken back."""
    if log.set_vote(answer_id, user_id, value, True).changed:
        return True
    log.set_vote(answer_id, user_id, value, False)
    return False


def correction_chunks(correction: CorrectionRecord, answer: AnswerRecord, *, private: bool) -> list[Chunk]:
    """The post an accepted correction becomes: the question and the corrected answer.

    Built by ingest (its id and scope checks). A correction of a private answer may repeat the
    asker's personal records, so it becomes the asker's own record, not a community post. An answer
    given outside a server (a DM) has no knowledge base to join: no chunks."""
    from ingest import text_chunks

    if not answer.guild_id:
        return []
    chunks = text_chunks(
        f"Question: {answer.question}\nAnswer: {correction.text}",
        source=f"correction #{correction.id}",
        scope="personal" if private else "community",
        guild_id=answer.guild_id,
        owner_id=answer.user_id if private else None,
    )
    stamp = correction.created_at.isoformat() if correction.created_at else None
    return [dataclasses.replace(c, author=correction.author_id, timestamp=stamp) for c in chunks]


def publish_correction(
    kb: KnowledgeBase, correction: CorrectionRecord, answer: AnswerRecord, *, private: bool
) -> None:
    """Put an accepted correction in the knowledge base (idempotent: same text, same chunk ids)."""
    chunks = correction_chunks(correction, answer, private=private)
    if chunks:
        kb.add(chunks)


@dataclass(frozen=True)
class CorrectionOutcome:
    """A correction after a use case ran, and whether this very call accepted it."""

    correction: CorrectionRecord
    newly_accepted: bool


def correct(
    log: FeedbackLog,
    kb: KnowledgeBase,
    answer: AnswerRecord,
    *,
    author_id: str,
    text: str,
    message_id: str | None,
    trusted: bool,
    votes_needed: int,
    private: bool,
) -> CorrectionOutcome:
    """Record a correction of ``answer`` (durable first) and publish it if it is accepted.

    ``private``: written where only the asker sees it. A correction of a private answer is private
    too: its pair trains only the asker's own adapter and its post is the asker's own record."""
    private = private or answer.private
    correction = log.add_correction(
        answer.id,
        author_id=author_id,
        text=text,
        message_id=message_id,
        trusted=trusted,
        votes_needed=votes_needed,
        private=private,
    )
    if correction.accepted:
        publish_correction(kb, correction, answer, private=private)
    return CorrectionOutcome(correction, correction.accepted)


def vote_on_correction(
    log: FeedbackLog,
    kb: KnowledgeBase,
    correction: CorrectionRecord,
    answer: AnswerRecord,
    *,
    voter_id: str,
    present: bool,
    trusted: bool,
    votes_needed: int,
    private: bool,
) -> CorrectionOutcome | None:
    """A member's 👍 on a correction of ``answer`` (or its removal); publishes it once accepted.

    None when the vote does not count: an author's vote on their own correction."""
    if correction.author_id == voter_id:
        return None
    was_accepted = correction.accepted
    correction = log.set_correction_vote(
        correction.id, voter_id, present, votes_needed=votes_needed, trusted=trusted
    )
    newly = correction.accepted and not was_accepted
    if newly:
        publish_correction(kb, correction, answer, private=private or correction.private or answer.private)
    return CorrectionOutcome(correction, newly)
