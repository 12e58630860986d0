"""Knowledge: add documents, remember a personal record, forget a member everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from bot.settings import KnowledgeSettings
    from feedback.log import FeedbackLog
    from ingest import IngestLimits, IngestReport
    from knowledge.store import KnowledgeBase


def ingest_limits(settings: KnowledgeSettings) -> IngestLimits:
    """The upload and chunking limits from ``LOOPBOT_KB_*``, the same for the CLI and the bot."""
    from ingest import IngestLimits

    return IngestLimits(
        max_file_mb=settings.max_file_mb,
        max_files=settings.max_files,
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
    )


def add_upload(
    kb: KnowledgeBase,
    name: str,
    data: bytes,
    *,
    scope: Literal["community", "personal"],
    guild_id: str,
    owner_id: str | None,
    limits: IngestLimits,
) -> IngestReport:
    """Read one uploaded file and store its passages; the report lists what was kept and every problem.

    Re-uploading an edited file replaces its old passages instead of adding duplicates."""
    from ingest import load_bytes, store_report

    report = load_bytes(name, data, scope=scope, guild_id=guild_id, owner_id=owner_id, limits=limits)
    if report.chunks:
        store_report(kb, report)
    return report


def remember(kb: KnowledgeBase, text: str, *, guild_id: str, owner_id: str, created: str) -> int:
    """Store a member's personal record (``/remember``): only their own answers will use it.

    ``created`` (ISO time) names the record; returns the number of passages stored."""
    from ingest import text_chunks

    chunks = text_chunks(
        text, source=f"your note of {created[:10]}", scope="personal", guild_id=guild_id, owner_id=owner_id
    )
    kb.add(chunks)
    return len(chunks)


@dataclass(frozen=True)
class ForgetSummary:
    """What forgetting a member deleted."""

    records: int
    answers: int
    corrections: int
    votes: int
    pairs: int

    def sentence(self) -> str:
        """One line for the member or the operator."""
        return (
            f"deleted {self.records} personal record(s), {self.answers} logged answer(s), "
            f"{self.corrections} correction(s), {self.votes} vote(s) and {self.pairs} training pair(s)"
        )


def forget_member(kb: KnowledgeBase, log: FeedbackLog, user_id: str) -> ForgetSummary:
    """Delete a member's personal records in every guild, then their answers, votes, corrections
    and training pairs; the next adapter is trained without them."""
    records = kb.forget_user(user_id)
    report = log.forget_user(user_id)
    return ForgetSummary(records, report.answers, report.corrections, report.votes, report.pairs)
