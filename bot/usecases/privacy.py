"""Privacy: what loopbot holds about a member (shown and exported), learning consent per member and
per server, the one-time note, and retention. ``/privacy``, ``loopbot member show|export`` and the
bot's daily retention call these.

A member's export is every row the data dir holds about them, and nothing of anyone else: the log's
rows (:func:`feedback.privacy.member_rows`), their personal records and the community posts they
wrote (the knowledge base), and which adapter versions were trained on their pairs (the registries).
Forgetting goes through :func:`bot.usecases.knowledge.forget_member`; turning learning off reaches
served adapters the same way (:func:`bot.usecases.knowledge.retire_stale_adapters`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feedback import privacy as consent
from feedback.errors import FeedbackError

if TYPE_CHECKING:
    from adapters.registry import AdapterVersion
    from feedback.log import FeedbackLog
    from feedback.privacy import Learning
    from knowledge.store import KnowledgeBase

# Discord refuses larger uploads from bots without boosts: a larger export is sent gzipped.
MAX_PLAIN_EXPORT_BYTES = 8_000_000
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainedVersion:
    """An adapter version trained on some of a member's pairs (or the member's own adapter)."""

    registry: str  # "server <id>", "your own adapter", "before per-server adapters"
    version: str
    active: bool
    pairs: int  # how many of the member's pairs it was trained on


@dataclass
class PrivacyReport:
    """What ``/privacy`` shows: counts here, in DMs and everywhere; adapters; the settings."""

    user_id: str
    guild_id: str | None  # None: asked in a DM
    here: dict[str, int]
    dms: dict[str, int]
    everywhere: dict[str, int]
    trained: list[TrainedVersion] = field(default_factory=list)
    learning: Learning | None = None
    server_learning: bool | None = None  # None in a DM
    retention_days: int = 0

    def text(self) -> str:
        """The ephemeral reply, under 2,000 characters."""
        lines = ["**What loopbot holds about you**"]
        if self.guild_id is not None:
            lines.append(f"In this server: {describe_counts(self.here)}.")
        lines.append(f"In direct messages: {describe_counts(self.dms)}.")
        lines.append(f"Everywhere (every server and DMs): {describe_counts(self.everywhere)}.")
        if self.trained:
            shown = ", ".join(
                f"{t.registry} `{t.version}`{' (served)' if t.active else ''}" for t in self.trained[:8]
            )
            more = f" and {len(self.trained) - 8} more" if len(self.trained) > 8 else ""
            lines.append(f"Adapter versions trained on your pairs: {shown}{more}.")
        else:
            lines.append("No adapter version was trained on your pairs.")
        learning = self.learning
        if learning is not None and learning.on:
            since = f" (again since {learning.since[:10]})" if learning.since else ""
            lines.append(f"Learning from you: **on**{since}. `/privacy learning: off` keeps me answering you but "
                         "learns nothing from you, and takes your pairs out of the next adapter.")  # fmt: skip
        elif learning is not None:
            lines.append(
                f"Learning from you: **off** since {str(learning.since)[:10]}: nothing you ask, vote or "
                "correct becomes a training pair. `/privacy learning: on` starts afresh."
            )
        if self.server_learning is not None:
            state = "on" if self.server_learning else "off: nothing here trains the model"
            lines.append(f"This server's learning: **{state}** (admins: `/privacy server_learning:`).")
        if self.retention_days:
            lines.append(
                f"Answers nobody voted on or corrected are deleted after {self.retention_days} days."
            )
        lines.append(
            "Download everything as JSON, or forget it all (every server, and the adapters trained on it)."
        )
        return "\n".join(lines)[:2000]


def describe_counts(counts: dict[str, int]) -> str:
    """``3 records · 12 answers · ...`` for the kinds present (``nothing`` when none)."""
    names = [
        ("records", "personal record"),
        ("posts", "community post you wrote"),
        ("answers", "answer to your questions"),
        ("votes", "vote"),
        ("corrections", "correction"),
        ("correction_votes", "vote on corrections"),
        ("shared_pairs", "shared training pair"),
        ("personal_pairs", "personal training pair"),
    ]
    parts = [
        f"{counts[key]} {label}{'' if counts[key] == 1 else 's'}" for key, label in names if counts.get(key)
    ]
    return " · ".join(parts) or "nothing"


def _kb_counts(kb: KnowledgeBase, user_id: str, guild_id: str | None) -> dict[str, int]:
    chunks = kb.member_chunks(user_id, guild_id=guild_id)
    records = sum(1 for c in chunks if c.scope == "personal")
    return {"records": records, "posts": len(chunks) - records}


def trained_versions(adapters_dir: Path | None, pair_ids: set[str], user_id: str) -> list[TrainedVersion]:
    """The adapter versions trained on any of ``pair_ids`` (the member's), in every registry, and
    every version of the member's own adapter."""
    from adapters.registry import all_registries

    if adapters_dir is None:
        return []
    found = []
    for registry in all_registries(adapters_dir):
        if registry.member_id is not None and registry.member_id != user_id and not pair_ids:
            continue
        versions = registry.list()
        if not versions:
            continue
        active = registry.active()
        own = registry.member_id == user_id
        name = (
            "your own adapter"
            if own
            else f"server {registry.guild_id}"
            if registry.guild_id
            else "another member's own adapter"  # whose is theirs to know
            if registry.member_id
            else "before per-server adapters"
        )
        for version in versions:
            used = len(pair_ids & set(version.pair_ids))
            if used or own:
                is_active = active is not None and active.version == version.version
                found.append(TrainedVersion(name, version.version, is_active, used))
    return found


def privacy_report(
    kb: KnowledgeBase,
    log: FeedbackLog,
    user_id: str,
    guild_id: str | None,
    *,
    adapters_dir: Path | None,
    retention_days: int,
) -> PrivacyReport:
    """What ``/privacy`` shows a member in ``guild_id`` (None: a DM). Reads only rows keyed by the
    member (indexed), their own collections and the registries' metadata."""
    user = str(user_id)
    here = (
        {**consent.member_counts(log, user, guild_id), **_kb_counts(kb, user, guild_id)} if guild_id else {}
    )
    dms = consent.member_counts(log, user, "")
    everywhere = {**consent.member_counts(log, user, None), **_kb_counts(kb, user, None)}
    trained = trained_versions(adapters_dir, consent.member_pair_ids(log, user), user)
    if guild_id is not None:  # this server's versions and their own first
        trained.sort(key=lambda t: (t.registry not in (f"server {guild_id}", "your own adapter"), t.registry))
    return PrivacyReport(
        user_id=user,
        guild_id=guild_id,
        here=here,
        dms=dms,
        everywhere=everywhere,
        trained=trained,
        learning=consent.member_learning(log, user),
        server_learning=consent.guild_learning(log, guild_id) if guild_id is not None else None,
        retention_days=retention_days,
    )


def export_member(
    kb: KnowledgeBase, log: FeedbackLog, user_id: str, *, adapters_dir: Path | None
) -> dict[str, Any]:
    """Everything the data dir holds about a member, as one JSON-able object (their download).

    Raises :class:`FeedbackError` when it holds nothing about them (a wrong id, most likely)."""
    user = str(user_id)
    rows = consent.member_rows(log, user)
    chunks = kb.member_chunks(user)
    pair_ids = {str(p["id"]) for p in rows["pairs"]}
    data: dict[str, Any] = {
        "format": f"loopbot member export v{FORMAT_VERSION}",
        "member": user,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **rows,
        "personal_records": [
            {"id": c.id, "guild_id": c.guild_id, "source": c.source, "text": c.text, "created": c.timestamp}
            for c in chunks
            if c.scope == "personal"
        ],
        # A post is "Question: ...\nAnswer: <your correction>": the question may be someone else's,
        # and your words are in "corrections" above; so the post is named, not repeated.
        "community_posts": [
            {"id": c.id, "guild_id": c.guild_id, "source": c.source, "created": c.timestamp}
            for c in chunks
            if c.scope == "community"
        ],
        "adapter_versions": [vars(t) for t in trained_versions(adapters_dir, pair_ids, user)],
        "notes": {
            "answers": "context passages and the full prompt are not repeated: your own records used in "
            "them are under personal_records, community posts are the server's",
            "pairs": "instruction / output are null where another member asked the question or wrote "
            "the correction (theirs, not yours); the input of a pair is its answer's context",
        },
    }
    if not holds_anything(data):
        raise FeedbackError(
            f"loopbot holds nothing about member {user}: no records, answers, votes, corrections or pairs. "
            "Check the id (Discord: User Settings → Advanced → Developer Mode, then right-click the member → "
            "Copy User ID)."
        )
    return data


def holds_anything(export: dict[str, Any]) -> bool:
    """Whether an export has any row (the learning setting alone counts too: it is kept about them)."""
    keys = ("answers", "votes", "corrections", "correction_votes", "pairs", "personal_records",
            "community_posts", "adapter_versions", "privacy_notes_shown")  # fmt: skip
    return any(export.get(key) for key in keys) or export["learning"]["since"] is not None


def export_json(data: dict[str, Any]) -> bytes:
    """An export as UTF-8 JSON."""
    return json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")


def export_file(data: dict[str, Any]) -> tuple[str, bytes]:
    """``(file name, bytes)`` of an export for Discord: JSON, gzipped when too large for an upload."""
    raw = export_json(data)
    name = f"loopbot-data-{data['member']}.json"
    if len(raw) > MAX_PLAIN_EXPORT_BYTES:
        return name + ".gz", gzip.compress(raw)
    return name, raw


def check_member_id(user_id: str) -> str:
    """A Discord user id (digits), or a :class:`FeedbackError` saying what to pass."""
    text = str(user_id).strip()
    if not text.isdigit():
        raise FeedbackError(
            f"{user_id!r} is not a Discord user id: pass the member's numeric id (e.g. 123456789012345678)."
        )
    return text


@dataclass(frozen=True)
class LearningOutcome:
    """A member's learning after a change, the pairs that left and the servers whose adapter changed."""

    change: consent.LearningChange
    replaced: dict[str, str | None] = field(default_factory=dict)

    def sentence(self) -> str:
        """What the member is told."""
        change = self.change
        if not change.changed:
            return f"Learning from you was already {'on' if change.learning.on else 'off'}; nothing changed."
        if change.learning.on:
            return (
                "Learning from you is **on** again, from now on: what you ask, vote and correct from here "
                "can become training pairs (nothing from before comes back)."
            )
        served = ""
        if self.replaced:
            served = f" {len(self.replaced)} server(s) stopped serving an adapter trained on them at once."
        return (
            "Learning from you is **off**, in every server and in DMs: I keep answering you, but nothing "
            f"you ask, vote or correct becomes a training pair. {len(change.withdrawn_pair_ids)} pair(s) "
            f"that held your data left the training data; the next adapter is trained without them.{served}"
        )


def set_learning(
    log: FeedbackLog,
    user_id: str,
    on: bool,
    *,
    adapters_dir: Path | None,
    serve: Callable[[str, AdapterVersion | None], Any] | None = None,
    serve_member: Callable[[str, AdapterVersion | None], Any] | None = None,
) -> LearningOutcome:
    """Turn learning from a member on or off. Off withdraws their pairs at once and, like a forget,
    makes every adapter trained on them fall back to a version without them (served through
    ``serve`` / ``serve_member``); the guilds in ``replaced`` should retrain."""
    from bot.usecases.knowledge import retire_stale_adapters

    change = consent.set_member_learning(log, str(user_id), on)
    replaced: dict[str, str | None] = {}
    if change.withdrawn_pair_ids and adapters_dir is not None:
        replaced = retire_stale_adapters(log, adapters_dir, serve=serve, serve_member=serve_member)
    return LearningOutcome(change, replaced)


def server_learning_sentence(on: bool, changed: bool) -> str:
    """What an admin is told after ``/privacy server_learning:``."""
    if not changed:
        return f"This server's learning was already {'on' if on else 'off'}; nothing changed."
    if on:
        return (
            "This server's learning is **on** again: votes and corrections from now on become training "
            "pairs, and training runs here again."
        )
    return (
        "This server's learning is **off**: no question, vote or correction here becomes a training pair "
        "from now on and no training runs here. The pairs made before stay, as does the served adapter "
        "(`/adapter rollback` undoes it)."
    )


def learning_refusal(log: FeedbackLog, guild_id: str | None, member_id: str | None) -> str:
    """Why a training cycle must not run ('' when it may): the server's learning is off, or the
    member whose own adapter it is turned learning off."""
    if member_id is not None and not consent.member_learning(log, member_id).on:
        return f"member {member_id} turned learning off"
    if guild_id and not consent.guild_learning(log, guild_id):
        return (
            f"learning is off in server {guild_id} (an admin turns it on with /privacy server_learning: on)"
        )
    return ""


def privacy_note(server_learning: bool, retention_days: int) -> str:
    """The one-time note a member gets the first time they use loopbot in a server."""
    kept = (
        f"answers nobody votes on or corrects are deleted after {retention_days} days"
        if retention_days
        else "answers are kept until you delete them"
    )
    learned = (
        "Answers you 👍/👎 or correct become training pairs for this server's model (private ones only for "
        "your own)."
        if server_learning
        else "Learning is off in this server: nothing here trains the model."
    )
    return (
        "**About your data** (shown once): I keep your questions and my answers "
        f"({kept}), your votes, corrections and `/remember` notes. {learned} "
        "`/privacy` shows what I hold about you, downloads it, stops me learning from you, or forgets it all."
    )
