"""Members in control: learning consent, a server's learning switch, the one-time note, what the log
holds about a member, and retention of unvoted answers.

Every function takes the :class:`~feedback.log.FeedbackLog` and runs in one of its transactions. What
may be learned is decided where pairs are derived (:func:`feedback.derive.learns`); this module
records the decisions and brings the existing pairs in line with them.

A member's learning consent holds in every server and in DMs. Turning it off takes their questions,
votes and corrections out of every pair at once; the pairs that leave are ledgered (reason
``consent``) beside forgotten ones, so an adapter trained on them is retired as after a forget.
Turning it on again starts afresh: only what they do from then on counts.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from feedback.derive import guild_learning_now, now_iso, rederive_pairs, to_iso
from feedback.maintenance import MEMBER_PAIRS, member_pair_rows

if TYPE_CHECKING:
    from feedback.log import FeedbackLog


@dataclass(frozen=True)
class Learning:
    """A member's learning setting: ``on`` and, once they changed it, since when."""

    on: bool
    since: str | None = None


@dataclass(frozen=True)
class LearningChange:
    """What turning a member's learning on or off did."""

    learning: Learning
    changed: bool
    withdrawn_pair_ids: tuple[int, ...] = ()  # pairs that held their data and left


@dataclass(frozen=True)
class RetentionReport:
    """What one retention run deleted: answers nobody voted on or corrected, older than the cutoff."""

    cutoff: str
    answers: int
    by_guild: dict[str, int] = field(default_factory=dict)  # '' = direct messages


def member_learning(log: FeedbackLog, user_id: str) -> Learning:
    """The member's learning setting (on unless they turned it off)."""
    with log.db.reading() as conn:
        row = conn.execute(
            "SELECT learning, since FROM member_learning WHERE user_id = ?", (str(user_id),)
        ).fetchone()
    return Learning(True) if row is None else Learning(bool(row["learning"]), row["since"])


def set_member_learning(log: FeedbackLog, user_id: str, on: bool) -> LearningChange:
    """Turn learning from a member on or off (every server and DMs).

    Off: every pair that holds their question or correction, or exists only through their vote, is
    re-derived without them at once and ledgered (``forgotten_pair_ids`` then names it: adapters
    trained on it are retired like after a forget). On again: counts from now on, nothing earlier."""
    user = str(user_id)
    with log.db.transaction() as conn:
        row = conn.execute("SELECT learning FROM member_learning WHERE user_id = ?", (user,)).fetchone()
        if (row is None or row["learning"]) == on:
            current = conn.execute("SELECT since FROM member_learning WHERE user_id = ?", (user,)).fetchone()
            return LearningChange(Learning(on, current["since"] if current else None), changed=False)
        now = now_iso()
        conn.execute(
            "INSERT INTO member_learning (user_id, learning, since) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET learning = excluded.learning, since = excluded.since",
            (user, int(on), now),
        )
        withdrawn: tuple[int, ...] = ()
        if not on:
            withdrawn = _withdraw_pairs(conn, user, now)
    return LearningChange(Learning(on, now), changed=True, withdrawn_pair_ids=withdrawn)


def _withdraw_pairs(conn: sqlite3.Connection, user: str, now: str) -> tuple[int, ...]:
    """Re-derive every answer the member took part in, delete the pairs imported for them, and ledger
    the pairs that left."""
    answers = {
        row[0]
        for row in conn.execute(
            "SELECT id FROM answers WHERE user_id = :u"
            " UNION SELECT answer_id FROM votes WHERE user_id = :u"
            " UNION SELECT answer_id FROM corrections WHERE author_id = :u"
            " UNION SELECT c.answer_id FROM correction_votes v JOIN corrections c ON c.id = v.correction_id"
            " WHERE v.user_id = :u",
            {"u": user},
        )
    }
    before = {
        row["id"]: row
        for answer_id in answers
        for row in conn.execute("SELECT id, kind, content_hash FROM pairs WHERE answer_id = ?", (answer_id,))
    }
    imported = conn.execute(
        "SELECT id, kind, content_hash FROM pairs WHERE answer_id IS NULL AND (user_id = :u OR owner_id = :u)",
        {"u": user},
    ).fetchall()
    before.update({row["id"]: row for row in imported})
    conn.executemany("DELETE FROM pairs WHERE id = ?", [(row["id"],) for row in imported])
    for answer_id in answers:
        rederive_pairs(conn, answer_id)
    left = [row for pair_id, row in before.items() if not _exists(conn, pair_id)]
    conn.executemany(
        "INSERT OR IGNORE INTO forget_ledger (pair_id, kind, content_hash, forgotten_at, reason)"
        " VALUES (?, ?, ?, ?, 'consent')",
        [(row["id"], row["kind"], row["content_hash"], now) for row in left],
    )
    return tuple(sorted(row["id"] for row in left))


def _exists(conn: sqlite3.Connection, pair_id: int) -> bool:
    return conn.execute("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)).fetchone() is not None


def guild_learning(log: FeedbackLog, guild_id: str) -> bool:
    """Whether a server's learning switch is on (it is unless an admin turned it off)."""
    with log.db.reading() as conn:
        return guild_learning_now(conn, str(guild_id))


def set_guild_learning(log: FeedbackLog, guild_id: str, on: bool) -> bool:
    """Turn a server's learning on or off; False when it already was. Off: no vote, correction or
    question in that server makes a pair from now on (the pairs made before stay, as does the
    served adapter: an admin rolls it back to undo it) and no training run starts there."""
    with log.db.transaction() as conn:
        if guild_learning_now(conn, str(guild_id)) == on:
            return False
        conn.execute(
            "INSERT INTO guild_learning (guild_id, learning, changed_at) VALUES (?, ?, ?)",
            (str(guild_id), int(on), now_iso()),
        )
    return True


def take_notice(log: FeedbackLog, guild_id: str, user_id: str) -> bool:
    """Record that a member has been shown the privacy note in a server; True the first time only
    (the caller then shows it). Forgetting the member forgets this too."""
    with log.db.transaction() as conn:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO member_notices (guild_id, user_id, noticed_at) VALUES (?, ?, ?)",
            (str(guild_id), str(user_id), now_iso()),
        )
    return cursor.rowcount == 1


def noticed(log: FeedbackLog, guild_id: str, user_id: str) -> bool:
    """Whether the member was already shown the privacy note in this server."""
    with log.db.reading() as conn:
        row = conn.execute(
            "SELECT 1 FROM member_notices WHERE guild_id = ? AND user_id = ?", (str(guild_id), str(user_id))
        ).fetchone()
    return row is not None


def forget_notice(log: FeedbackLog, guild_id: str, user_id: str) -> None:
    """Undo :func:`take_notice` (the note could not be delivered: show it next time)."""
    with log.db.transaction() as conn:
        conn.execute(
            "DELETE FROM member_notices WHERE guild_id = ? AND user_id = ?", (str(guild_id), str(user_id))
        )


# ---- what the log holds about a member -----------------------------------------------------------

ANSWER_FIELDS = (
    "id, guild_id, channel_id, question, answer, chunk_ids, prompt_version, adapter, private, created_at"
)


def member_rows(log: FeedbackLog, user_id: str) -> dict[str, Any]:
    """Every row of the log that is about the member, as plain values (their export).

    Each row is theirs: answers to their questions, their votes, corrections and correction votes,
    the pairs that hold their words, their learning setting and notes. Words of anyone else are left
    out: the retrieved context of an answer (passages; their own records are exported from the
    knowledge base), a pair's question when someone else asked it, and a correction someone else
    wrote. Votes of others on their answers are not theirs either."""
    user = str(user_id)
    with log.db.reading() as conn:
        answers = []
        for row in conn.execute(
            f"SELECT {ANSWER_FIELDS} FROM answers WHERE user_id = ? ORDER BY id", (user,)
        ):
            item = dict(row)
            item["chunk_ids"] = json.loads(item["chunk_ids"])
            item["private"] = bool(item["private"])
            item["message_ids"] = [
                m[0]
                for m in conn.execute(
                    "SELECT message_id FROM answer_messages WHERE answer_id = ? ORDER BY rowid", (row["id"],)
                )
            ]
            answers.append(item)
        votes = [
            dict(row)
            for row in conn.execute(
                "SELECT answer_id, value, created_at FROM votes WHERE user_id = ? ORDER BY answer_id, value",
                (user,),
            )
        ]
        corrections = [
            {**dict(row), "trusted": bool(row["trusted"]), "private": bool(row["private"])}
            for row in conn.execute(
                "SELECT id, answer_id, text, message_id, trusted, private, created_at, accepted_at"
                " FROM corrections WHERE author_id = ? ORDER BY id",
                (user,),
            )
        ]
        correction_votes = [
            dict(row)
            for row in conn.execute(
                "SELECT correction_id, created_at FROM correction_votes WHERE user_id = ? ORDER BY correction_id",
                (user,),
            )
        ]
        pairs = [_pair_row(row, user) for row in member_pair_rows(conn, user)]
        notices = [
            dict(row)
            for row in conn.execute(
                "SELECT guild_id, noticed_at FROM member_notices WHERE user_id = ? ORDER BY guild_id", (user,)
            )
        ]
        learning = conn.execute(
            "SELECT learning, since FROM member_learning WHERE user_id = ?", (user,)
        ).fetchone()
    return {
        "learning": {"on": True, "since": None}
        if learning is None
        else {"on": bool(learning["learning"]), "since": learning["since"]},
        "privacy_notes_shown": notices,
        "answers": answers,
        "votes": votes,
        "corrections": corrections,
        "correction_votes": correction_votes,
        "pairs": pairs,
    }


def member_pair_ids(log: FeedbackLog, user_id: str) -> set[str]:
    """Ids (as adapters record them) of the pairs holding the member's data."""
    with log.db.reading() as conn:
        return {str(row["id"]) for row in member_pair_rows(conn, str(user_id))}


def _pair_row(row: sqlite3.Row, user: str) -> dict[str, Any]:
    asked = row["user_id"] == user  # their question (or, imported for them, their taught fact)
    own_output = row["author_id"] == user or (asked and row["author_id"] is None)
    return {
        "id": row["id"],
        "kind": row["kind"],
        "guild_id": row["guild_id"],
        "personal": row["owner_id"] is not None,
        "answer_id": row["answer_id"],
        "correction_id": row["correction_id"],
        "source": row["source"],
        "created_at": row["created_at"],
        # Another member's question or correction is theirs, not this member's: named by id only.
        "instruction": row["instruction"] if asked else None,
        "output": row["output"] if own_output else None,
    }


def member_counts(log: FeedbackLog, user_id: str, guild_id: str | None) -> dict[str, int]:
    """How many rows of each kind the log holds about the member in one server (``''``: their DMs;
    None: everywhere). Pairs: ``shared`` and ``personal`` ones holding their words."""
    user = str(user_id)
    where = "" if guild_id is None else " AND a.guild_id = :g"
    params = {"u": user, "g": "" if guild_id is None else str(guild_id)}
    with log.db.reading() as conn:

        def count(sql: str) -> int:
            return int(conn.execute(sql, params).fetchone()[0])

        pair_scope = "" if guild_id is None else " AND COALESCE(p.guild_id, '') = :g"
        pairs = dict(
            conn.execute(
                "SELECT CASE WHEN p.owner_id IS NULL THEN 'shared' ELSE 'personal' END, COUNT(*)"
                f" FROM ({MEMBER_PAIRS}) p WHERE 1{pair_scope} GROUP BY 1",
                params,
            ).fetchall()
        )
        return {
            "answers": count(f"SELECT COUNT(*) FROM answers a WHERE a.user_id = :u{where}"),
            "votes": count(
                f"SELECT COUNT(*) FROM votes v JOIN answers a ON a.id = v.answer_id WHERE v.user_id = :u{where}"
            ),
            "corrections": count(
                "SELECT COUNT(*) FROM corrections c JOIN answers a ON a.id = c.answer_id"
                f" WHERE c.author_id = :u{where}"
            ),
            "correction_votes": count(
                "SELECT COUNT(*) FROM correction_votes v JOIN corrections c ON c.id = v.correction_id"
                f" JOIN answers a ON a.id = c.answer_id WHERE v.user_id = :u{where}"
            ),
            "shared_pairs": int(pairs.get("shared", 0)),
            "personal_pairs": int(pairs.get("personal", 0)),
        }


# ---- retention --------------------------------------------------------------------------------


def apply_retention(log: FeedbackLog, days: int, *, now: datetime | None = None) -> RetentionReport:
    """Delete the answers older than ``days`` that nobody voted on or corrected (with their message
    ids), then scrub the file as a forget does. Answers with a vote, a correction or a pair stay, as
    do pairs, imported pairs and everything outside the log. The run's counts (no ids, no text) are
    kept for ``loopbot feedback stats``. ``days`` 0 keeps everything."""
    moment = now or datetime.now(UTC)
    cutoff = to_iso(moment - timedelta(days=days))
    if days <= 0:
        return RetentionReport(cutoff="", answers=0)
    with log.db.transaction() as conn:
        doomed = conn.execute(
            "SELECT a.id, a.guild_id FROM answers a WHERE a.created_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM votes v WHERE v.answer_id = a.id)"
            " AND NOT EXISTS (SELECT 1 FROM corrections c WHERE c.answer_id = a.id)"
            " AND NOT EXISTS (SELECT 1 FROM pairs p WHERE p.answer_id = a.id)",
            (cutoff,),
        ).fetchall()
        by_guild: dict[str, int] = {}
        for row in doomed:
            by_guild[row["guild_id"]] = by_guild.get(row["guild_id"], 0) + 1
        conn.executemany("DELETE FROM answers WHERE id = ?", [(row["id"],) for row in doomed])
        ran_at = to_iso(moment)
        conn.executemany(
            "INSERT INTO retention_runs (ran_at, guild_id, answers) VALUES (?, ?, ?)",
            [(ran_at, guild, number) for guild, number in sorted(by_guild.items())],
        )
    if doomed:
        log.db.scrub()
    return RetentionReport(cutoff=cutoff, answers=len(doomed), by_guild=by_guild)
