"""The row writes behind :class:`feedback.log.FeedbackLog` that are more than one statement: an
answer's messages, a correction (new, or an edit of the same message) and a vote on one.

Every function takes an open connection and runs inside the caller's transaction; the caller then
re-derives what the write changed (:mod:`feedback.derive`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from feedback.derive import now_iso
from feedback.errors import FeedbackError


def require_answer(conn: sqlite3.Connection, answer_id: int) -> None:
    """FeedbackError unless ``answer_id`` is in the log."""
    if conn.execute("SELECT 1 FROM answers WHERE id = ?", (answer_id,)).fetchone() is None:
        raise FeedbackError(f"answer {answer_id} is not in the feedback log (it may have been forgotten).")


def attach_messages(conn: sqlite3.Connection, answer_id: int, message_ids: Sequence[str]) -> None:
    """Record the Discord messages an answer was posted as; one already another answer's is refused."""
    for message_id in message_ids:
        row = conn.execute(
            "SELECT answer_id FROM answer_messages WHERE message_id = ?", (str(message_id),)
        ).fetchone()
        if row is not None and row[0] != answer_id:
            raise FeedbackError(f"message {message_id} already belongs to answer {row[0]}.")
        conn.execute(
            "INSERT OR IGNORE INTO answer_messages (message_id, answer_id) VALUES (?, ?)",
            (str(message_id), answer_id),
        )


def resolve_correction(conn: sqlite3.Connection, correction: int | str) -> int:
    """The id of a correction given by id or by its message id; FeedbackError when it is not there."""
    if isinstance(correction, str):
        row = conn.execute("SELECT id FROM corrections WHERE message_id = ?", (correction,)).fetchone()
    else:
        row = conn.execute("SELECT id FROM corrections WHERE id = ?", (int(correction),)).fetchone()
    if row is None:
        raise FeedbackError(
            f"correction {correction!r} is not in the feedback log (it may have been forgotten)."
        )
    return int(row[0])


def write_correction(
    conn: sqlite3.Connection,
    answer_id: int,
    author_id: str,
    text: str,
    message_id: str | None,
    trusted: bool,
    votes_needed: int | None,
    private: bool,
) -> int:
    """Insert a correction, or update the one already recorded for ``message_id`` (an edited reply);
    returns its id."""
    existing = None
    if message_id is not None:
        existing = conn.execute(
            "SELECT id, answer_id FROM corrections WHERE message_id = ?", (str(message_id),)
        ).fetchone()
    if existing is not None:
        if existing["answer_id"] != answer_id:
            raise FeedbackError(
                f"message {message_id} is already a correction of answer {existing['answer_id']}."
            )
        correction_id = int(existing["id"])
        conn.execute(
            "UPDATE corrections SET text = ?, trusted = MAX(trusted, ?),"
            " votes_needed = COALESCE(?, votes_needed) WHERE id = ?",
            (text, int(trusted), votes_needed, correction_id),
        )
        return correction_id
    cursor = conn.execute(
        "INSERT INTO corrections (answer_id, author_id, text, message_id, trusted, votes_needed,"
        " created_at, private) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            answer_id,
            author_id,
            text,
            None if message_id is None else str(message_id),
            int(trusted),
            votes_needed,
            now_iso(),
            int(private),
        ),
    )
    return int(cursor.lastrowid or 0)


def write_correction_vote(
    conn: sqlite3.Connection,
    correction_id: int,
    user_id: str,
    present: bool,
    trusted: bool,
    votes_needed: int,
) -> None:
    """Add (``present``) or remove a member's 👍 on a correction, and the number of votes it needs now."""
    if present:
        conn.execute(
            "INSERT INTO correction_votes (correction_id, user_id, trusted, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (correction_id, user_id)"
            " DO UPDATE SET trusted = excluded.trusted",
            (correction_id, user_id, int(trusted), now_iso()),
        )
    else:
        conn.execute(
            "DELETE FROM correction_votes WHERE correction_id = ? AND user_id = ?", (correction_id, user_id)
        )
    conn.execute("UPDATE corrections SET votes_needed = ? WHERE id = ?", (votes_needed, correction_id))
