"""How pairs follow from votes and corrections: the rules, applied inside the caller's transaction.

See :mod:`feedback.log` for the rules in words. Every function here takes an open connection and
never commits: the caller's transaction makes the vote and its derived pairs one atomic change.

Only what may be learned counts toward a pair (:func:`learns`): nothing a member did while their
learning was off or before they turned it on again, and nothing done in a server while its learning
switch was off. Such questions, votes and corrections are still recorded (a vote is a vote, an
accepted correction is still a post) but make no pair; a server whose learning is off now gets no new
pair at all.
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


def learns(user: str, moment: str, guild: str) -> str:
    """An SQL condition: a contribution by ``user`` at ``moment`` in ``guild`` (SQL expressions,
    qualified by their table's alias: ``m`` and ``g`` are taken) may become a training pair. The member has not turned learning off (or did it before turning it on
    again at ``since``), and the server's switch was on at that moment (no change recorded: on)."""
    return (
        f"NOT EXISTS (SELECT 1 FROM member_learning m WHERE m.user_id = {user}"
        f" AND (m.learning = 0 OR {moment} < m.since))"
        f" AND COALESCE((SELECT g.learning FROM guild_learning g WHERE g.guild_id = {guild}"
        f" AND g.changed_at <= {moment} ORDER BY g.changed_at DESC, g.rowid DESC LIMIT 1), 1) = 1"
    )


def guild_learning_now(conn: sqlite3.Connection, guild_id: str) -> bool:
    """Whether the server's learning switch is on now (on unless an admin turned it off; DMs: on)."""
    row = conn.execute(
        "SELECT learning FROM guild_learning WHERE guild_id = ? ORDER BY changed_at DESC, rowid DESC LIMIT 1",
        (guild_id,),
    ).fetchone()
    return row is None or bool(row[0])


def vote_counts(conn: sqlite3.Connection, answer_id: int, *, learnable: bool = False) -> tuple[int, int]:
    """(👍, 👎) on an answer; ``learnable``: only the votes that may make a pair."""
    where = f" AND {learns('v.user_id', 'v.created_at', 'a.guild_id')}" if learnable else ""
    row = conn.execute(
        "SELECT COALESCE(SUM(v.value = 1), 0), COALESCE(SUM(v.value = -1), 0) FROM votes v"
        f" JOIN answers a ON a.id = v.answer_id WHERE v.answer_id = ?{where}",
        (answer_id,),
    ).fetchone()
    return int(row[0]), int(row[1])


def correction_votes(
    conn: sqlite3.Connection, correction_id: int, author_id: str, *, learnable: bool = False
) -> tuple[int, bool]:
    """(👍 from members other than the author, whether one of them is trusted); ``learnable``: only
    the votes that may make a pair."""
    where = f" AND {learns('v.user_id', 'v.created_at', 'a.guild_id')}" if learnable else ""
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(MAX(v.trusted), 0) FROM correction_votes v"
        " JOIN corrections c ON c.id = v.correction_id JOIN answers a ON a.id = c.answer_id"
        f" WHERE v.correction_id = ? AND v.user_id != ?{where}",
        (correction_id, author_id),
    ).fetchone()
    return int(row[0]), bool(row[1])


def _learnable_correction(conn: sqlite3.Connection, answer_id: int) -> sqlite3.Row | None:
    """The newest accepted correction of an answer that may make a pair: written by a member who is
    learned from, and accepted by its own trust or by votes that may be learned from."""
    rows = conn.execute(
        "SELECT c.id, c.author_id, c.text, c.private, c.trusted, c.votes_needed FROM corrections c"
        " JOIN answers a ON a.id = c.answer_id WHERE c.answer_id = ? AND c.accepted_at IS NOT NULL"
        f" AND {learns('c.author_id', 'c.created_at', 'a.guild_id')} ORDER BY c.id DESC",
        (answer_id,),
    ).fetchall()
    for row in rows:
        votes, trusted_vote = correction_votes(conn, row["id"], row["author_id"], learnable=True)
        needed = row["votes_needed"]
        if row["trusted"] or trusted_vote or (needed is not None and votes >= needed):
            return row  # type: ignore[no-any-return]
    return None


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
        "SELECT question, context, answer, user_id, guild_id, private,"
        f" {learns('a.user_id', 'a.created_at', 'a.guild_id')} AS learnable FROM answers a WHERE a.id = ?",
        (answer_id,),
    ).fetchone()
    if answer is None:
        return set()
    up, down = vote_counts(conn, answer_id, learnable=True)
    # A question that may not be learned from makes no pair, whoever votes on its answer.
    correction = _learnable_correction(conn, answer_id) if answer["learnable"] else None
    if not answer["learnable"]:
        up = down = 0
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
    if not guild_learning_now(conn, answer["guild_id"]):
        wanted.clear()  # learning is off in this server: pairs may go, none is made
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
