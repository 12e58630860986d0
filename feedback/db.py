"""The SQLite connection behind the feedback log: WAL, migrations, transactions, thread safety.

One connection per :class:`Database`, guarded by a re-entrant lock: the bot calls the log through
``asyncio.to_thread`` from several worker threads, and a lock is simpler and cheaper than a
connection per thread for a log written a few times a minute. WAL lets another process (the CLI,
the trainer) read while the bot writes; ``busy_timeout`` makes writers from other processes wait
for the lock instead of failing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from feedback.errors import FeedbackError
from feedback.migrations import migrate

BUSY_TIMEOUT_MS = 30_000


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. On a brand-new file several openers race for this and SQLite answers "locked"
    without calling the busy handler, so retry until the busy timeout instead."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class Database:
    """A migrated SQLite database at ``path`` (created with its parent directory if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (BEGIN IMMEDIATE for writes).
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except (OSError, sqlite3.Error) as error:
            raise FeedbackError(
                f"cannot open the feedback database {self.path}: {error}. "
                "Check that LOOPBOT_DATA_DIR exists and is writable."
            ) from error
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enable_wal(conn)
            # FULL: an answer or vote is on disk before the bot acknowledges it, even on power loss.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            # Deleted rows are overwritten, not left in free pages: a forgotten member's text is gone.
            conn.execute("PRAGMA secure_delete = ON")
            self.applied = migrate(conn)
        except sqlite3.DatabaseError as error:
            conn.close()
            raise FeedbackError(
                f"{self.path} is not a usable loopbot feedback database ({error}). "
                "Move it away and loopbot will create a new one."
            ) from error
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        with self._lock:
            conn = self._conn
            if conn.in_transaction:
                # Nested use (a helper called from inside a transaction) joins the outer one.
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A consistent read: several SELECTs see one snapshot."""
        with self._lock:
            conn = self._conn
            if conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def scrub(self) -> None:
        """Leave no deleted text on disk: move the WAL's old page versions into the (securely
        deleted) main file, truncate the WAL, and rebuild the file without free pages."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.execute("VACUUM")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Close the connection; the object must not be used afterwards."""
        with self._lock:
            self._conn.close()
