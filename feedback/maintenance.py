"""Whole-log operations behind :class:`feedback.log.FeedbackLog` (stats, forget, import) and the
conversion of rows into records.

Every function takes an open connection and runs inside the caller's transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from feedback.derive import content_hash, correction_votes, evaluate_correction, rederive_pairs, vote_counts
from feedback.errors import FeedbackError
from feedback.records import (
    PAIR_KINDS,
    AnswerRecord,
    CorrectionRecord,
    FeedbackStats,
    ForgetReport,
    ImportReport,
    Pair,
)


def row_to_pair(row: sqlite3.Row) -> Pair:
    """A ``pairs`` row as a :class:`Pair`."""
    return Pair(
        id=row["id"],
        kind=row["kind"],
        instruction=row["instruction"],
        input=row["input"],
        output=row["output"],
        user_id=row["user_id"],
        answer_id=row["answer_id"],
        created_at=datetime.fromisoformat(row["created_at"]),
        author_id=row["author_id"],
        correction_id=row["correction_id"],
        source=row["source"],
        guild_id=row["guild_id"],
        owner_id=row["owner_id"],
    )


def load_answer(conn: sqlite3.Connection, answer_id: int) -> AnswerRecord | None:
    """The answer with this id and its messages and vote counts, or None."""
    row = conn.execute("SELECT * FROM answers WHERE id = ?", (answer_id,)).fetchone()
    if row is None:
        return None
    messages = conn.execute(
        "SELECT message_id FROM answer_messages WHERE answer_id = ? ORDER BY rowid", (answer_id,)
    )
    up, down = vote_counts(conn, answer_id)
    return AnswerRecord(
        id=row["id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        user_id=row["user_id"],
        question=row["question"],
        context=row["context"],
        chunk_ids=tuple(json.loads(row["chunk_ids"])),
        prompt=row["prompt"],
        prompt_version=row["prompt_version"],
        adapter=row["adapter"],
        answer=row["answer"],
        created_at=datetime.fromisoformat(row["created_at"]),
        message_ids=tuple(m[0] for m in messages),
        upvotes=up,
        downvotes=down,
        private=bool(row["private"]),
    )


def load_correction(conn: sqlite3.Connection, correction_id: int) -> CorrectionRecord:
    """The correction with this id (which must exist) and its vote count."""
    row = conn.execute("SELECT * FROM corrections WHERE id = ?", (correction_id,)).fetchone()
    accepted_at = row["accepted_at"]
    return CorrectionRecord(
        id=row["id"],
        answer_id=row["answer_id"],
        author_id=row["author_id"],
        text=row["text"],
        message_id=row["message_id"],
        trusted=bool(row["trusted"]),
        accepted=accepted_at is not None,
        votes=correction_votes(conn, correction_id, row["author_id"])[0],
        votes_needed=row["votes_needed"],
        created_at=datetime.fromisoformat(row["created_at"]),
        accepted_at=None if accepted_at is None else datetime.fromisoformat(accepted_at),
        private=bool(row["private"]),
    )


def stats(conn: sqlite3.Connection, guild_id: str | None) -> FeedbackStats:
    """Counts over one guild's answers (imported pairs belong to no guild) or over everything."""
    # "answers in scope" as a subquery keeps one code path for both cases.
    scope = "SELECT id FROM answers" + (" WHERE guild_id = :guild" if guild_id is not None else "")
    params = {"guild": guild_id}

    def count(sql: str) -> int:
        return int(conn.execute(sql, params).fetchone()[0] or 0)

    pairs: dict[str, int] = dict.fromkeys(PAIR_KINDS, 0)
    # Imported pairs have no answer: with a guild, those imported for it count.
    pair_scope = f"answer_id IN ({scope}) OR answer_id IS NULL" + (
        " AND guild_id = :guild" if guild_id is not None else ""
    )
    for kind, number in conn.execute(
        f"SELECT kind, COUNT(*) FROM pairs WHERE {pair_scope} GROUP BY kind", params
    ):
        pairs[kind] = int(number)
    return FeedbackStats(
        answers=count(f"SELECT COUNT(*) FROM ({scope})"),
        upvotes=count(f"SELECT COUNT(*) FROM votes WHERE value = 1 AND answer_id IN ({scope})"),
        downvotes=count(f"SELECT COUNT(*) FROM votes WHERE value = -1 AND answer_id IN ({scope})"),
        corrections=count(f"SELECT COUNT(*) FROM corrections WHERE answer_id IN ({scope})"),
        pending=count(
            f"SELECT COUNT(*) FROM corrections WHERE accepted_at IS NULL AND answer_id IN ({scope})"
        ),
        accepted=count(
            f"SELECT COUNT(*) FROM corrections WHERE accepted_at IS NOT NULL AND answer_id IN ({scope})"
        ),
        pairs=pairs,
        forgotten_pairs=count("SELECT COUNT(*) FROM forget_ledger WHERE reason = 'forget'"),
        withdrawn_pairs=count("SELECT COUNT(*) FROM forget_ledger WHERE reason = 'consent'"),
        retention_removed=count(
            "SELECT SUM(answers) FROM retention_runs"
            + (" WHERE guild_id = :guild" if guild_id is not None else "")
        ),
        retention_last_run=conn.execute(
            "SELECT MAX(ran_at) FROM retention_runs"
            + (" WHERE guild_id = :guild" if guild_id is not None else ""),
            params,
        ).fetchone()[0],
    )


# The pairs that hold a member's data (parameter ``:u``): they asked the question or wrote the correction.
MEMBER_PAIRS = (
    "SELECT * FROM pairs WHERE user_id = :u OR author_id = :u"
    " OR answer_id IN (SELECT id FROM answers WHERE user_id = :u)"
    " OR correction_id IN (SELECT id FROM corrections WHERE author_id = :u)"
)


def member_pair_rows(conn: sqlite3.Connection, user_id: str) -> list[sqlite3.Row]:
    """The ``pairs`` rows holding the member's data, by id (what a forget deletes, what an export shows)."""
    return conn.execute(MEMBER_PAIRS + " ORDER BY id", {"u": user_id}).fetchall()


def forget_user(conn: sqlite3.Connection, user_id: str, now: str) -> ForgetReport:
    """Delete everything of ``user_id`` and ledger the pair ids that held their data.

    A member who turned learning off stays off (that row holds no text: it keeps their wish in force
    if they come back); the one-time privacy notes they were shown are forgotten."""
    own_answers = [r[0] for r in conn.execute("SELECT id FROM answers WHERE user_id = ?", (user_id,))]
    own_corrections = [
        r[0] for r in conn.execute("SELECT id FROM corrections WHERE author_id = ?", (user_id,))
    ]
    doomed = member_pair_rows(conn, user_id)
    conn.execute("DELETE FROM member_notices WHERE user_id = ?", (user_id,))
    conn.execute("DELETE FROM member_learning WHERE user_id = ? AND learning = 1", (user_id,))
    conn.executemany(
        "INSERT OR IGNORE INTO forget_ledger (pair_id, kind, content_hash, forgotten_at) VALUES (?, ?, ?, ?)",
        [(row["id"], row["kind"], row["content_hash"], now) for row in doomed],
    )
    conn.executemany("DELETE FROM pairs WHERE id = ?", [(row["id"],) for row in doomed])

    # Other members' answers and corrections this member voted on change state without the vote.
    voted_answers = {r[0] for r in conn.execute("SELECT answer_id FROM votes WHERE user_id = ?", (user_id,))}
    voted_corrections = {
        r[0] for r in conn.execute("SELECT correction_id FROM correction_votes WHERE user_id = ?", (user_id,))
    }
    corrected_answers = {
        r[0]
        for r in conn.execute("SELECT DISTINCT answer_id FROM corrections WHERE author_id = ?", (user_id,))
    }
    votes = conn.execute("DELETE FROM votes WHERE user_id = ?", (user_id,)).rowcount
    votes += conn.execute("DELETE FROM correction_votes WHERE user_id = ?", (user_id,)).rowcount
    conn.execute("DELETE FROM corrections WHERE author_id = ?", (user_id,))
    conn.execute("DELETE FROM answers WHERE user_id = ?", (user_id,))  # cascades to messages, votes, ...

    for correction_id in voted_corrections - set(own_corrections):
        if conn.execute("SELECT 1 FROM corrections WHERE id = ?", (correction_id,)).fetchone():
            evaluate_correction(conn, correction_id)
    for answer_id in (voted_answers | corrected_answers) - set(own_answers):
        rederive_pairs(conn, answer_id)
    return ForgetReport(
        user_id=user_id,
        answers=len(own_answers),
        corrections=len(own_corrections),
        votes=votes,
        pair_ids=tuple(sorted(row["id"] for row in doomed)),
    )


def _text(row: dict[str, Any], key: str, *, required: bool) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise FeedbackError(
            f"'{key}' must be text, got {type(value).__name__}" if value is not None else f"no '{key}'"
        )
    if required and not value.strip():
        raise FeedbackError(f"'{key}' is empty")
    return value.strip()


def import_rows(
    conn: sqlite3.Connection,
    rows: Iterable[dict[str, Any]],
    source: str,
    now: str,
    *,
    guild_id: str | None = None,
    owner_id: str | None = None,
) -> ImportReport:
    """Insert the valid, new rows as pairs of ``guild_id``'s adapter (None: every guild's) or of
    ``owner_id``'s own adapter (a member's import is theirs: forgotten with them); report the others.

    A row without a ``kind`` is ``taught``: a fact learned like a correction. Duplicates are counted
    within the same destination: one file may teach two guilds."""
    problems: list[str] = []
    imported = duplicates = forgotten = 0
    for number, row in enumerate(rows, start=1):
        try:
            if not isinstance(row, dict):
                raise FeedbackError(f"expected an object with instruction/output, got {type(row).__name__}")
            kind = row.get("kind", "taught")
            if kind not in PAIR_KINDS:
                raise FeedbackError(f"kind {kind!r} is not one of {', '.join(PAIR_KINDS)}")
            instruction = _text(row, "instruction", required=True)
            output = _text(row, "output", required=True)
            input_ = _text(row, "input", required=False)
        except FeedbackError as error:
            problems.append(f"row {number}: {error}")
            continue
        digest = content_hash(instruction, input_, output)
        if conn.execute(
            "SELECT 1 FROM forget_ledger WHERE content_hash = ? AND reason = 'forget'", (digest,)
        ).fetchone():
            forgotten += 1
        elif conn.execute(
            "SELECT 1 FROM pairs WHERE content_hash = ? AND guild_id IS ? AND owner_id IS ?",
            (digest, guild_id, owner_id),
        ).fetchone():
            duplicates += 1
        else:
            conn.execute(
                "INSERT INTO pairs (kind, instruction, input, output, user_id, source, content_hash,"
                " created_at, guild_id, owner_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, instruction, input_, output, owner_id, source, digest, now, guild_id, owner_id),
            )
            imported += 1
    return ImportReport(source, imported, duplicates, forgotten, tuple(problems))
