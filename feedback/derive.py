"""How pairs follow from votes and corrections: the rules, applied inside the caller's transaction.

See :mod:`feedback.log` for the rules in words. Every function here takes an open connection and
never commits: the caller's transaction makes the vote and its derived pairs one atomic change.
"""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime

DISCORD_SOURCE = "discord"


def now_iso() -> str:
    """The current UTC time as stored in the log (ISO 8601, sortable as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def to_iso(moment: datetime) -> str:
    """``moment`` in the log's text format; a naive datetime is taken to be UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def content_hash(instruction: str, input_: str, output: str) -> str:
    """A stable fingerprint of a pair's text, used to find duplicates and forgotten content."""
    joined = "\x1f".join(part.strip() for part in (instruction, input_, output))
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


def vote_counts(conn: sqlite3.Connection, answer_id: int) -> tuple[int, int]:
    row = conn.execute(
        "SELECT COALESCE(SUM(value = 1), 0), COALESCE(SUM(value = -1), 0) FROM votes WHERE answer_id = ?",
        (answer_id,),
    ).fetchone()
    return int(row[0]), int(row[1])


def correction_votes(conn: sqlite3.Connection, correction_id: int, author_id: str) -> tuple[int, bool]:
    """(👍 from members other than the author, whether one of them is trusted)."""
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(MAX(trusted), 0) FROM correction_votes WHERE correction_id = ? AND user_id != ?",
        (correction_id, author_id),
    ).fetchone()
    return int(row[0]), bool(row[1])


def evaluate_correction(conn: sqlite3.Connection, correction_id: int) -> None:
    """Set a correction's accepted state from its votes, then re-derive its answer's pairs."""
    row = conn.execute(
        "SELECT answer_id, author_id, trusted, votes_needed, accepted_at FROM corrections WHERE id = ?",
        (correction_id,),
    ).fetchone()
    votes, trusted_vote = correction_votes(conn, correction_id, row["author_id"])
    needed = row["votes_needed"]
    accepted = bool(row["trusted"]) or trusted_vote or (needed is not None and votes >= needed)
    if accepted and row["accepted_at"] is None:
        conn.execute("UPDATE corrections SET accepted_at = ? WHERE id = ?", (now_iso(), correction_id))
    elif not accepted and row["accepted_at"] is not None:
        conn.execute("UPDATE corrections SET accepted_at = NULL WHERE id = ?", (correction_id,))
    rederive_pairs(conn, row["answer_id"])


def rederive_pairs(conn: sqlite3.Connection, answer_id: int) -> set[str]:
    """Bring an answer's pairs in line with its votes and corrections; return the kinds it now has.

    Pairs that still hold keep their id and creation time; changed ones are replaced.
    """
    answer = conn.execute(
        "SELECT question, context, answer, user_id, guild_id, private FROM answers WHERE id = ?", (answer_id,)
    ).fetchone()
    if answer is None:
        return set()
    up, down = vote_counts(conn, answer_id)
    correction = conn.execute(
        "SELECT id, author_id, text, private FROM corrections WHERE answer_id = ? AND accepted_at IS NOT NULL"
        " ORDER BY id DESC LIMIT 1",
        (answer_id,),
    ).fetchone()
    # A private answer's pairs, and a privately written correction's, belong to the asker alone.
    private = bool(answer["private"])
    # kind -> (output, correction id, correction author, owner)
    wanted: dict[str, tuple[str, int | None, str | None, str | None]] = {}
    if correction is not None:
        owner = answer["user_id"] if private or correction["private"] else None
        wanted["corrected"] = (correction["text"], correction["id"], correction["author_id"], owner)
    elif up >= 1 and up > down:
        wanted["positive"] = (answer["answer"], None, None, answer["user_id"] if private else None)
    if down >= 1 and down > up:
        wanted["negative"] = (answer["answer"], None, None, answer["user_id"] if private else None)
    for row in conn.execute(
        "SELECT id, kind, output, correction_id, owner_id FROM pairs WHERE answer_id = ?", (answer_id,)
    ).fetchall():
        want = wanted.get(row["kind"])
        if want is not None and (want[0], want[1], want[3]) == (
            row["output"],
            row["correction_id"],
            row["owner_id"],
        ):
            del wanted[row["kind"]]  # still true as recorded: keep its id
        else:
            conn.execute("DELETE FROM pairs WHERE id = ?", (row["id"],))
    for kind, (output, correction_id, author_id, owner_id) in wanted.items():
        conn.execute(
            "INSERT INTO pairs (kind, instruction, input, output, user_id, author_id, answer_id, correction_id,"
            " source, content_hash, created_at, guild_id, owner_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind,
                answer["question"],
                answer["context"],
                output,
                answer["user_id"],
                author_id,
                answer_id,
                correction_id,
                DISCORD_SOURCE,
                content_hash(answer["question"], answer["context"], output),
                now_iso(),
                answer["guild_id"] or None,
                owner_id,
            ),
        )
    return {row[0] for row in conn.execute("SELECT kind FROM pairs WHERE answer_id = ?", (answer_id,))}
