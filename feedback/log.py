"""The feedback log: answers, 👍/👎 votes, corrections and the training pairs derived from them.

Every method is one SQLite transaction and is safe to call from several threads (the bot uses
``asyncio.to_thread``). Pairs live in a ``pairs`` table that is re-derived for an answer inside the
same transaction as the vote or correction that changed it, so the pairs never disagree with the
votes. The derivation rules, for one answer:

* **corrected**: the answer has an accepted correction -> instruction = question, input = the
  retrieved context, output = the correction. With several accepted corrections the most recently
  written one wins (one target per question). It supersedes the positive pair.
* **positive**: no accepted correction, 👍 >= 1 and 👍 > 👎 -> output = the answer.
* **negative**: 👎 >= 1 and 👎 > 👍 -> output = the answer, kept for preference training and never
  returned as a training target unless asked for by kind. Kept even when the answer is corrected
  (the correction is then the "chosen" and this the "rejected" answer).

Pairs of kind **taught** come from no answer: an owner imports them (``loopbot dataset import``), and
they are learned as corrections are.

A vote is one (answer, member, 👍 or 👎), mirroring Discord's reactions: adding it twice or removing
it twice changes nothing. A correction is accepted at once when ``trusted`` (the asker or a curator
wrote it) or when a trusted member 👍 it, otherwise once ``votes_needed`` other members 👍 it; the
author's own 👍 doesn't count. Acceptance follows the votes: withdrawing 👍 below the threshold makes
it pending again, as a removed 👍 withdraws a positive pair.

Pair ids are never reused (``AUTOINCREMENT``): the trainer records them in an adapter's metadata and
:meth:`FeedbackLog.forgotten_pair_ids` tells which adapters hold forgotten data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from feedback.db import Database
from feedback.derive import (
    evaluate_correction,
    now_iso,
    rederive_pairs,
    to_iso,
    vote_counts,
)
from feedback.errors import FeedbackError
from feedback.maintenance import forget_user as _forget_user
from feedback.maintenance import import_rows, load_answer, load_correction, row_to_pair
from feedback.maintenance import stats as _stats
from feedback.records import (
    PAIR_KINDS,
    TRAINING_KINDS,
    AnswerRecord,
    CorrectionRecord,
    FeedbackStats,
    ForgetReport,
    ImportReport,
    Pair,
    VoteResult,
)
from feedback.rows import (
    attach_messages,
    require_answer,
    resolve_correction,
    write_correction,
    write_correction_vote,
)


def _text(value: object, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise FeedbackError(f"{name} must be text, got {type(value).__name__}.")
    if not allow_empty and not value.strip():
        raise FeedbackError(f"{name} is empty: pass the {name.replace('_', ' ')} text.")
    return value


class FeedbackLog:
    """The SQLite feedback log at ``path`` (created and migrated on first use)."""

    def __init__(self, path: Path) -> None:
        self.db = Database(Path(path))
        self.path = self.db.path

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    # ---- answers -------------------------------------------------------------------------------

    def record_answer(
        self,
        *,
        guild_id: str,
        channel_id: str,
        user_id: str,
        question: str,
        context: str,
        chunk_ids: Sequence[str],
        prompt: str,
        prompt_version: str,
        adapter: str | None,
        answer: str,
        message_ids: Sequence[str] = (),
        private: bool = False,
    ) -> int:
        """Log an answer (durably, before the bot acknowledges it) and return its id.

        ``private``: the answer used the asker's personal records or was delivered where only they
        see it (an answer in a DM always is); its pairs then belong to the asker alone."""
        _text(question, "question")
        _text(context, "context", allow_empty=True)
        _text(answer, "answer", allow_empty=True)
        _text(prompt, "prompt", allow_empty=True)
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO answers (guild_id, channel_id, user_id, question, context, chunk_ids, prompt,"
                " prompt_version, adapter, answer, created_at, private) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    str(guild_id),
                    str(channel_id),
                    str(user_id),
                    question,
                    context,
                    json.dumps([str(chunk) for chunk in chunk_ids]),
                    prompt,
                    str(prompt_version),
                    adapter,
                    answer,
                    now_iso(),
                    int(private or not str(guild_id)),
                ),
            )
            answer_id = int(cursor.lastrowid or 0)
            attach_messages(conn, answer_id, message_ids)
        return answer_id

    def add_message_ids(self, answer_id: int, message_ids: Sequence[str]) -> None:
        """Attach more Discord messages to an answer (a long answer is split over several)."""
        with self.db.transaction() as conn:
            require_answer(conn, answer_id)
            attach_messages(conn, answer_id, message_ids)

    def answer_for_message(self, message_id: str) -> AnswerRecord | None:
        """The answer a bot message belongs to, or None (not an answer, or forgotten)."""
        with self.db.reading() as conn:
            row = conn.execute(
                "SELECT answer_id FROM answer_messages WHERE message_id = ?", (str(message_id),)
            ).fetchone()
            return None if row is None else load_answer(conn, row[0])

    def get_answer(self, answer_id: int) -> AnswerRecord | None:
        """The answer with this id, or None."""
        with self.db.reading() as conn:
            return load_answer(conn, answer_id)

    def answer_texts(self, answer_ids: Iterable[int]) -> dict[int, str]:
        """The text of each of these answers that is still in the log, by answer id."""
        wanted = sorted({int(i) for i in answer_ids})
        texts: dict[int, str] = {}
        with self.db.reading() as conn:
            for start in range(0, len(wanted), 500):  # SQLite's bound on parameters per statement
                chunk = wanted[start : start + 500]
                sql = f"SELECT id, answer FROM answers WHERE id IN ({', '.join('?' * len(chunk))})"
                texts.update({row[0]: row[1] for row in conn.execute(sql, chunk)})
        return texts

    # ---- votes ---------------------------------------------------------------------------------

    def set_vote(self, answer_id: int, user_id: str, value: Literal[1, -1], present: bool) -> VoteResult:
        """Add (``present=True``) or remove a member's 👍 (1) or 👎 (-1); repeating a call is a no-op."""
        if value not in (1, -1):
            raise FeedbackError(f"a vote is 1 (👍) or -1 (👎), got {value!r}.")
        with self.db.transaction() as conn:
            require_answer(conn, answer_id)
            if present:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO votes (answer_id, user_id, value, created_at) VALUES (?, ?, ?, ?)",
                    (answer_id, str(user_id), value, now_iso()),
                )
            else:
                cursor = conn.execute(
                    "DELETE FROM votes WHERE answer_id = ? AND user_id = ? AND value = ?",
                    (answer_id, str(user_id), value),
                )
            kinds = rederive_pairs(conn, answer_id)
            up, down = vote_counts(conn, answer_id)
        return VoteResult(
            answer_id=answer_id,
            user_id=str(user_id),
            value=value,
            present=present,
            changed=cursor.rowcount == 1,
            upvotes=up,
            downvotes=down,
            positive="positive" in kinds,
            negative="negative" in kinds,
        )

    # ---- corrections ---------------------------------------------------------------------------

    def add_correction(
        self,
        answer_id: int,
        *,
        author_id: str,
        text: str,
        message_id: str | None,
        trusted: bool,
        votes_needed: int | None = None,
        private: bool = False,
    ) -> CorrectionRecord:
        """Record a correction of an answer; ``trusted`` (asker or curator) accepts it at once.

        ``private``: written where only the asker sees it (a DM, the form under a private answer);
        its pair then belongs to the asker alone, like a private answer's.

        Recording the same ``message_id`` again updates that correction's text (an edited reply)
        instead of adding a second one.
        """
        _text(text, "correction")
        text = text.strip()
        with self.db.transaction() as conn:
            require_answer(conn, answer_id)
            correction_id = write_correction(
                conn, answer_id, str(author_id), text, message_id, trusted, votes_needed, private
            )
            evaluate_correction(conn, correction_id)
            return load_correction(conn, correction_id)

    def set_correction_vote(
        self,
        correction: int | str,
        user_id: str,
        present: bool,
        *,
        votes_needed: int,
        trusted: bool = False,
    ) -> CorrectionRecord:
        """Add or remove a member's 👍 on a correction (by correction id or its message id).

        The correction is accepted once ``votes_needed`` members other than its author 👍 it, or
        at once when a ``trusted`` member (the asker, a curator) does.
        """
        if votes_needed < 1:
            raise FeedbackError(f"votes_needed must be at least 1, got {votes_needed}.")
        with self.db.transaction() as conn:
            correction_id = resolve_correction(conn, correction)
            write_correction_vote(conn, correction_id, str(user_id), present, trusted, votes_needed)
            evaluate_correction(conn, correction_id)
            return load_correction(conn, correction_id)

    def correction_for_message(self, message_id: str) -> CorrectionRecord | None:
        """The correction recorded for a Discord message, or None."""
        with self.db.reading() as conn:
            row = conn.execute(
                "SELECT id FROM corrections WHERE message_id = ?", (str(message_id),)
            ).fetchone()
            return None if row is None else load_correction(conn, int(row[0]))

    def pending_corrections(self, guild_id: str | None = None, limit: int = 20) -> list[CorrectionRecord]:
        """The curators' queue: corrections still waiting for votes, oldest first."""
        sql = (
            "SELECT c.id FROM corrections c JOIN answers a ON a.id = c.answer_id WHERE c.accepted_at IS NULL"
        )
        params: list[Any] = []
        if guild_id is not None:
            sql += " AND a.guild_id = ?"
            params.append(str(guild_id))
        params.append(max(0, int(limit)))
        with self.db.reading() as conn:
            ids = [row[0] for row in conn.execute(sql + " ORDER BY c.id LIMIT ?", params)]
            return [load_correction(conn, cid) for cid in ids]

    def corrections(self, answer_id: int) -> list[CorrectionRecord]:
        """Every correction of an answer, oldest first."""
        with self.db.reading() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM corrections WHERE answer_id = ? ORDER BY id", (answer_id,)
                )
            ]
            return [load_correction(conn, cid) for cid in ids]

    # ---- pairs, stats, forget, import ------------------------------------------------------------

    def pairs(
        self,
        *,
        kinds: Sequence[str] = TRAINING_KINDS,
        exclude_forgotten: bool = True,
        since: datetime | None = None,
        guild_id: str | None = None,
        owner_id: str | None = None,
    ) -> list[Pair]:
        """The current pairs of the given kinds, oldest first.

        Shared pairs only, unless ``owner_id`` is given: then that member's personal pairs only (a
        personal pair never reaches shared training, an export or a report). ``guild_id`` keeps one
        guild's pairs plus the imported ones, which belong to no guild. ``exclude_forgotten`` also
        drops pairs whose text equals a forgotten pair's (a forgotten member's data that came back
        through an old export). ``since`` keeps pairs derived at or after that moment (naive
        datetimes are UTC).
        """
        kinds = tuple(kinds)
        unknown = [kind for kind in kinds if kind not in PAIR_KINDS]
        if unknown or not kinds:
            raise FeedbackError(
                f"unknown pair kind(s) {unknown or '(none)'}: choose from {', '.join(PAIR_KINDS)}."
            )
        sql = f"SELECT * FROM pairs WHERE kind IN ({', '.join('?' * len(kinds))})"
        params: list[Any] = list(kinds)
        if owner_id is None:
            sql += " AND owner_id IS NULL"
        else:
            sql += " AND owner_id = ?"
            params.append(str(owner_id))
        if guild_id is not None:
            sql += " AND (guild_id = ? OR guild_id IS NULL)"
            params.append(str(guild_id))
        if since is not None:
            sql += " AND created_at >= ?"
            params.append(to_iso(since))
        if exclude_forgotten:
            sql += " AND content_hash NOT IN (SELECT content_hash FROM forget_ledger WHERE reason = 'forget')"
        with self.db.reading() as conn:
            return [row_to_pair(row) for row in conn.execute(sql + " ORDER BY id", params)]

    def stats(self, guild_id: str | None = None) -> FeedbackStats:
        """Counts of answers, votes, corrections and pairs, for one guild or all."""
        with self.db.reading() as conn:
            return _stats(conn, None if guild_id is None else str(guild_id))

    def forget_user(self, user_id: str) -> ForgetReport:
        """Delete a member's answers (as asker), corrections, votes and every pair holding their data.

        The deleted pair ids go to a forget ledger (see :meth:`forgotten_pair_ids`); pairs of other
        members' answers are re-derived without the member's votes.
        """
        with self.db.transaction() as conn:
            report = _forget_user(conn, str(user_id), now_iso())
        self.db.scrub()
        return report

    def guild_ids(self) -> list[str]:
        """The guilds that have logged answers (DM answers belong to none)."""
        with self.db.reading() as conn:
            rows = conn.execute(
                "SELECT DISTINCT guild_id FROM answers WHERE guild_id != '' ORDER BY guild_id"
            )
            return [str(row[0]) for row in rows]

    def personal_pair_owners(self) -> list[str]:
        """The members who have personal pairs (each may train an adapter of their own)."""
        with self.db.reading() as conn:
            rows = conn.execute(
                "SELECT DISTINCT owner_id FROM pairs WHERE owner_id IS NOT NULL AND owner_id != '' "
                "ORDER BY owner_id"
            )
            return [str(row[0]) for row in rows]

    def forgotten_pair_ids(self) -> set[int]:
        """Ids of every pair deleted by :meth:`forget_user` or withdrawn when its member turned learning
        off (:mod:`feedback.privacy`): an adapter trained on any is stale."""
        with self.db.reading() as conn:
            return {int(row[0]) for row in conn.execute("SELECT pair_id FROM forget_ledger")}

    def import_pairs(
        self,
        rows: Iterable[dict[str, Any]],
        *,
        source: str,
        guild_id: str | None = None,
        owner_id: str | None = None,
    ) -> ImportReport:
        """Add ready-made pairs (``instruction``, ``output``, optional ``input`` and ``kind``).

        Rows become ``taught`` pairs (facts learned like corrections) unless they say ``kind``. They
        teach ``guild_id``'s adapter (None: every guild's), or with ``owner_id`` that member's own
        adapter only: private, never shared, forgotten with the member. Rows already imported to the
        same place are counted as duplicates, rows a member had forgotten are refused, bad rows are
        reported (``row N: why``) and skipped; the rest are imported in one transaction.
        """
        source = _text(source, "source").strip()
        if guild_id is not None and owner_id is not None:
            raise FeedbackError("import to a guild or to a member, not both: a member's pairs are private.")
        with self.db.transaction() as conn:
            return import_rows(
                conn,
                rows,
                source,
                now_iso(),
                guild_id=None if guild_id is None else str(guild_id),
                owner_id=None if owner_id is None else str(owner_id),
            )
