"""Knowledge: add documents, remember a personal record, forget a member everywhere (their records,
the posts they wrote, their feedback and pairs, and the adapters trained on them)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from adapters.registry import AdapterVersion
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
    """What forgetting a member deleted, and the guilds whose served adapter had to change."""

    records: int
    answers: int
    corrections: int
    votes: int
    pairs: int
    # guild id -> the version now served there (None: the base model), for adapters that held the pairs
    replaced: dict[str, str | None] = field(default_factory=dict)
    own_adapter_versions: int = 0  # versions of the member's own adapter, deleted
    posts: int = 0  # community posts the member wrote (their accepted public corrections), deleted

    def sentence(self) -> str:
        """One line for the member or the operator."""
        own = (
            f", and the member's own adapter ({self.own_adapter_versions} version(s))"
            if self.own_adapter_versions
            else ""
        )
        posts = f", {self.posts} community post(s) they wrote" if self.posts else ""
        return (
            f"deleted {self.records} personal record(s){posts}, {self.answers} logged answer(s), "
            f"{self.corrections} correction(s), {self.votes} vote(s) and {self.pairs} training pair(s){own}"
        )


def forget_member(
    kb: KnowledgeBase,
    log: FeedbackLog,
    user_id: str,
    *,
    adapters_dir: Path | None = None,
    serve: Callable[[str, AdapterVersion | None], Any] | None = None,
    drop_own_adapter: Callable[[], Any] | None = None,
    serve_member: Callable[[str, AdapterVersion | None], Any] | None = None,
) -> ForgetSummary:
    """Delete a member's personal records and the community posts they wrote (accepted public
    corrections) in every guild, then their answers, votes, corrections and training pairs, scrubbing
    every file that held them (the SQLite files, Chroma's segments, the lexical index, the stored
    datasets and gate reports of adapter versions).

    With ``adapters_dir``, a guild whose active adapter was trained on the member's pairs falls back
    at once to its newest version without them (or the base model); ``serve(guild, version)`` makes
    the running bot answer with it. The next retrain leaves the pairs out. The member's own adapter
    (every version, its datasets and reports) is deleted, after ``drop_own_adapter`` took it out of
    the running bot. Another member's own adapter trained on the member's shared pairs (kept beside
    theirs) falls back the same way; ``serve_member(member, version)`` serves it."""
    from adapters.registry import member_registry

    records = kb.forget_user(user_id)
    posts = kb.forget_author(user_id)
    report = log.forget_user(user_id)
    replaced: dict[str, str | None] = {}
    own_versions = 0
    if adapters_dir is not None and str(user_id).isdigit():
        own = member_registry(adapters_dir, user_id)
        if own.root.exists():
            own_versions = len(own.versions())
            if drop_own_adapter is not None:
                drop_own_adapter()
            shutil.rmtree(own.root)
    if adapters_dir is not None:
        replaced = retire_stale_adapters(log, adapters_dir, serve=serve, serve_member=serve_member)
    return ForgetSummary(
        records, report.answers, report.corrections, report.votes, report.pairs, replaced, own_versions, posts
    )


def retire_stale_adapters(
    log: FeedbackLog,
    adapters_dir: Path,
    *,
    serve: Callable[[str, AdapterVersion | None], Any] | None = None,
    serve_member: Callable[[str, AdapterVersion | None], Any] | None = None,
) -> dict[str, str | None]:
    """After pairs were forgotten or withdrawn: scrub them from every version's stored data, and make
    every registry whose active version was trained on any fall back to its newest version without
    them (or the base model), served at once through ``serve(guild, version)`` /
    ``serve_member(member, version)``. Returns guild id -> the version now served there (None: the
    base model), for the guilds that changed: their next retrain leaves the pairs out."""
    from adapters.registry import all_registries
    from bot.usecases.serving import retire_forgotten

    replaced: dict[str, str | None] = {}
    forgotten = log.forgotten_pair_ids()
    for registry in all_registries(adapters_dir):
        changed, now = retire_forgotten(registry, forgotten)
        if changed and registry.member_id is not None:
            if serve_member is not None:
                serve_member(registry.member_id, now)
        elif changed:
            guild = registry.guild_id or ""
            replaced[guild] = now.version if now is not None else None
            if serve is not None and guild:
                serve(guild, now)
    return replaced
