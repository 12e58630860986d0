"""Numbered schema migrations of the feedback log, recorded in a ``_migrations`` table.

Modelled on simonw/llm: each migration is a function ``mNNN_name(conn)`` registered in order;
:func:`migrate` applies the ones not yet recorded in one transaction, together with the rows
that record them, so a crash never leaves a half-applied migration. Never edit a released
migration: add ``m00N_...`` instead.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

from feedback.errors import FeedbackError

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration; its ``__name__`` is what gets recorded."""
    MIGRATIONS.append(fn)
    return fn


def _run(conn: sqlite3.Connection, statements: str) -> None:
    # Not executescript(): it COMMITs first, which would break the migration's transaction.
    for statement in statements.split(";"):
        if statement.strip():
            conn.execute(statement)


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    _run(
        conn,
        """
        CREATE TABLE answers (
            id INTEGER PRIMARY KEY,
            guild_id TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            question TEXT NOT NULL,
            context TEXT NOT NULL,
            chunk_ids TEXT NOT NULL,
            prompt TEXT NOT NULL,
            prompt_version TEXT NOT NULL,
            adapter TEXT,
            answer TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE answer_messages (
            message_id TEXT PRIMARY KEY,
            answer_id INTEGER NOT NULL REFERENCES answers(id) ON DELETE CASCADE
        );
        CREATE TABLE votes (
            answer_id INTEGER NOT NULL REFERENCES answers(id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            value INTEGER NOT NULL CHECK (value IN (1, -1)),
            created_at TEXT NOT NULL,
            PRIMARY KEY (answer_id, user_id, value)
        );
        CREATE TABLE corrections (
            id INTEGER PRIMARY KEY,
            answer_id INTEGER NOT NULL REFERENCES answers(id) ON DELETE CASCADE,
            author_id TEXT NOT NULL,
            text TEXT NOT NULL,
            message_id TEXT UNIQUE,
            trusted INTEGER NOT NULL,
            votes_needed INTEGER,
            accepted_at TEXT,
            created_at TEXT NOT NULL
        );
        CREATE TABLE correction_votes (
            correction_id INTEGER NOT NULL REFERENCES corrections(id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,
            trusted INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            PRIMARY KEY (correction_id, user_id)
        );
        -- AUTOINCREMENT: a pair id is never reused, so ids recorded in an adapter's metadata
        -- keep meaning the same pair even after pairs are deleted.
        CREATE TABLE pairs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('positive', 'corrected', 'negative')),
            instruction TEXT NOT NULL,
            input TEXT NOT NULL,
            output TEXT NOT NULL,
            user_id TEXT,
            author_id TEXT,
            answer_id INTEGER REFERENCES answers(id) ON DELETE CASCADE,
            correction_id INTEGER REFERENCES corrections(id) ON DELETE CASCADE,
            source TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX answers_user ON answers(user_id);
        CREATE INDEX answers_guild ON answers(guild_id);
        CREATE INDEX answer_messages_answer ON answer_messages(answer_id);
        CREATE INDEX corrections_answer ON corrections(answer_id);
        CREATE INDEX corrections_author ON corrections(author_id);
        CREATE INDEX votes_user ON votes(user_id);
        CREATE INDEX correction_votes_user ON correction_votes(user_id);
        CREATE INDEX pairs_answer ON pairs(answer_id);
        CREATE INDEX pairs_user ON pairs(user_id);
        CREATE INDEX pairs_author ON pairs(author_id);
        -- foreign keys: without these, deleting a correction scans every pair (ON DELETE CASCADE)
        CREATE INDEX pairs_correction ON pairs(correction_id);
        CREATE INDEX pairs_kind_created ON pairs(kind, created_at);
        CREATE INDEX pairs_hash ON pairs(content_hash)
        """,
    )


@migration
def m002_forget_ledger(conn: sqlite3.Connection) -> None:
    # Only ids, kinds and a content hash are kept, never the member's text or id: enough to tell
    # which adapters were trained on forgotten data and to refuse re-importing it.
    _run(
        conn,
        """
        CREATE TABLE forget_ledger (
            pair_id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            forgotten_at TEXT NOT NULL
        );
        CREATE INDEX forget_ledger_hash ON forget_ledger(content_hash)
        """,
    )


@migration
def m003_private_pairs(conn: sqlite3.Connection) -> None:
    # A pair whose answer used a member's personal records, was delivered privately, or whose
    # correction was written privately belongs to that member (owner_id): it may train only their own
    # adapter, never shared data. Each pair also says which guild's adapter it teaches (guild_id;
    # NULL for imported pairs, which every guild learns). Answers asked in a DM were always private.
    _run(
        conn,
        """
        ALTER TABLE answers ADD COLUMN private INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE corrections ADD COLUMN private INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE pairs ADD COLUMN guild_id TEXT;
        ALTER TABLE pairs ADD COLUMN owner_id TEXT;
        UPDATE answers SET private = 1 WHERE guild_id = '';
        UPDATE pairs SET guild_id = (SELECT NULLIF(a.guild_id, '') FROM answers a WHERE a.id = pairs.answer_id)
            WHERE answer_id IS NOT NULL;
        UPDATE pairs SET owner_id = user_id
            WHERE answer_id IN (SELECT id FROM answers WHERE private = 1);
        CREATE INDEX pairs_scope ON pairs(guild_id, owner_id, kind)
        """,
    )


@migration
def m004_taught_pairs(conn: sqlite3.Connection) -> None:
    # A pair an owner imports (`loopbot dataset import`) is a fact to teach, learned like a correction:
    # kind 'taught'. SQLite cannot change a CHECK constraint, so the table is rebuilt with the same
    # columns and rows (the copy happens inside the migration's transaction). Pair ids must never be
    # reused, so the AUTOINCREMENT counter is carried over: ids of deleted pairs stay retired.
    sequence = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'pairs'").fetchone()
    columns = [row[1] for row in conn.execute("PRAGMA table_info(pairs)")]
    _run(
        conn,
        """
        CREATE TABLE pairs_new (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('positive', 'corrected', 'taught', 'negative')),
            instruction TEXT NOT NULL,
            input TEXT NOT NULL,
            output TEXT NOT NULL,
            user_id TEXT,
            author_id TEXT,
            answer_id INTEGER REFERENCES answers(id) ON DELETE CASCADE,
            correction_id INTEGER REFERENCES corrections(id) ON DELETE CASCADE,
            source TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            created_at TEXT NOT NULL,
            guild_id TEXT,
            owner_id TEXT
        )
        """,
    )
    names = ", ".join(columns)
    conn.execute(f"INSERT INTO pairs_new ({names}) SELECT {names} FROM pairs")
    _run(
        conn,
        """
        DROP TABLE pairs;
        ALTER TABLE pairs_new RENAME TO pairs;
        CREATE INDEX pairs_answer ON pairs(answer_id);
        CREATE INDEX pairs_user ON pairs(user_id);
        CREATE INDEX pairs_author ON pairs(author_id);
        CREATE INDEX pairs_correction ON pairs(correction_id);
        CREATE INDEX pairs_kind_created ON pairs(kind, created_at);
        CREATE INDEX pairs_hash ON pairs(content_hash);
        CREATE INDEX pairs_scope ON pairs(guild_id, owner_id, kind)
        """,
    )
    if sequence is not None:
        conn.execute("DELETE FROM sqlite_sequence WHERE name = 'pairs'")
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('pairs', ?)", (sequence[0],))


@migration
def m005_member_control(conn: sqlite3.Connection) -> None:
    # What members and servers decide about learning, and what retention removed (feedback/privacy.py).
    # member_learning: one row per member who turned learning off (learning 0) or on again (learning 1,
    # counting only what they do from `since` on); no row: learned from. guild_learning: every change
    # of a server's switch, so a vote counts only if its server was learning when it was cast.
    # member_notices: who was shown the one-time privacy note in which server. retention_runs: counts
    # only, never a member's id or text. A ledgered pair's reason says why it left: forget or consent.
    _run(
        conn,
        """
        CREATE TABLE member_learning (
            user_id TEXT PRIMARY KEY,
            learning INTEGER NOT NULL CHECK (learning IN (0, 1)),
            since TEXT NOT NULL
        );
        CREATE TABLE guild_learning (
            guild_id TEXT NOT NULL,
            learning INTEGER NOT NULL CHECK (learning IN (0, 1)),
            changed_at TEXT NOT NULL
        );
        CREATE INDEX guild_learning_guild ON guild_learning(guild_id, changed_at);
        CREATE TABLE member_notices (
            guild_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            noticed_at TEXT NOT NULL,
            PRIMARY KEY (guild_id, user_id)
        );
        CREATE INDEX member_notices_user ON member_notices(user_id);
        CREATE TABLE retention_runs (
            id INTEGER PRIMARY KEY,
            ran_at TEXT NOT NULL,
            guild_id TEXT NOT NULL,
            answers INTEGER NOT NULL
        );
        ALTER TABLE forget_ledger ADD COLUMN reason TEXT NOT NULL DEFAULT 'forget';
        CREATE INDEX answers_created ON answers(created_at)
        """,
    )


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations recorded in ``_migrations``, in the order they were applied."""
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    return [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now.

    ``conn`` must be in autocommit mode (``isolation_level=None``). ``BEGIN IMMEDIATE`` takes the
    write lock before looking at ``_migrations``, so two processes opening a new database at the
    same time apply each migration once.
    """
    known = {fn.__name__ for fn in MIGRATIONS}
    applied_now: list[str] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = applied_migrations(conn)
        unknown = [name for name in done if name not in known]
        if unknown:
            raise FeedbackError(
                f"the feedback database has migrations this loopbot does not know ({', '.join(unknown)}): "
                "it was written by a newer version. Upgrade loopbot or point LOOPBOT_DATA_DIR elsewhere."
            )
        for fn in MIGRATIONS:
            if fn.__name__ in done:
                continue
            fn(conn)
            conn.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                (fn.__name__, datetime.now(UTC).isoformat()),
            )
            applied_now.append(fn.__name__)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return applied_now
