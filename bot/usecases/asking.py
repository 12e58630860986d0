"""Asking: answer a question from the knowledge base and record it in the feedback log.

The bot streams the answer first and records it when it is complete (:func:`record_answer`); the
CLI demo answers and records in one call (:func:`answer_and_record`). Either way the record is
committed before anyone can vote on the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feedback.log import FeedbackLog
    from knowledge.chain import Answer, AnswerService


@dataclass(frozen=True)
class Asker:
    """Who asked and where: Discord ids as text; ``guild_id`` None in a direct message."""

    user_id: str
    guild_id: str | None
    channel_id: str


def uses_personal(sources: Iterable[Any]) -> bool:
    """True when any source (a chunk or an answer's source) is someone's personal record."""
    return any(str(getattr(source, "scope", "")) == "personal" for source in sources)


def is_private(answer: Answer, *, delivered_privately: bool) -> bool:
    """Whether an answer is the asker's alone: it used their personal records, or only they saw it."""
    return delivered_privately or uses_personal(answer.sources)


def record_answer(
    log: FeedbackLog, answer: Answer, asker: Asker, *, delivered_privately: bool = False
) -> int:
    """Log ``answer`` with everything a training pair needs (durable on return); its answer id.

    A private answer (see :func:`is_private`) is logged as such: its pairs never reach shared training."""
    return log.record_answer(
        guild_id=asker.guild_id or "",
        channel_id=asker.channel_id,
        user_id=asker.user_id,
        question=answer.question,
        context=answer.context,
        chunk_ids=tuple(answer.chunk_ids),
        prompt=answer.prompt,
        prompt_version=answer.prompt_version,
        adapter=answer.adapter,
        answer=answer.answer,
        private=is_private(answer, delivered_privately=delivered_privately),
    )


def answer_and_record(
    service: AnswerService,
    log: FeedbackLog,
    question: str,
    asker: Asker,
    history: Sequence[dict[str, str]] = (),
) -> tuple[int, Answer]:
    """Answer ``question`` as ``asker`` (blocking) and record it; ``(answer id, answer)``."""
    answer = service.answer(question, user_id=asker.user_id, guild_id=asker.guild_id, history=history)
    return record_answer(log, answer, asker), answer


def retrieves_personal(service: AnswerService, question: str, *, user_id: str, guild_id: str | None) -> bool:
    """Whether answering ``question`` would use any of the asker's personal records.

    The answer service's own retrieval is asked (its embedding is cached, so the answer that
    follows does not embed twice). Such an answer must be delivered privately."""
    if guild_id is None:
        return False
    hits = service.retrieve(question, user_id=user_id, guild_id=guild_id)
    return uses_personal(hit.chunk for hit in hits)
