"""One writer per embedded Chroma directory, enforced with an exclusive ``flock``.

Chroma's embedded client is thread-safe but not process-safe: two processes writing one persist
directory can lose or hide data. The first process that writes takes the lock and keeps it until it
closes; another process that tries to write gets a :class:`KnowledgeError` before touching anything.
The kernel drops the lock when the owner dies, so a crash never leaves a stale lock behind.
The writer also compacts the store's files after a forget (:func:`compact_store_files`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from pathlib import Path
from typing import IO

from knowledge.errors import KnowledgeError

log = logging.getLogger(__name__)


class StoreLockedError(KnowledgeError):
    """Another process owns the embedded store."""


class StoreLock:
    """An exclusive, non-blocking, process-wide lock on a store directory."""

    FILENAME = "loopbot.lock"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.FILENAME
        self._handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        """Whether this object currently holds the lock."""
        return self._handle is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StoreLockedError` naming the owner's pid."""
        if self._handle is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise StoreLockedError(
                f"another loopbot process (pid {owner}) owns {self.directory}: stop it or use a Chroma "
                "server (LOOPBOT_KB_CHROMA_HOST)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Give the lock back (closing the file releases the ``flock``)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def compact_store_files(persist_dir: Path) -> None:
    """Remove deleted text from an embedded store's files, not just from its tables.

    Chroma's SQLite keeps deleted documents in free pages and in its full-text index's old
    segments; a forgotten member's words must not stay on disk. Merge the index, then VACUUM.
    """
    path = Path(persist_dir) / "chroma.sqlite3"
    if not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(str(path), timeout=30)) as db:
            names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "embedding_fulltext_search" in names:
                db.execute(
                    "INSERT INTO embedding_fulltext_search(embedding_fulltext_search) VALUES ('optimize')"
                )
                db.commit()
            db.execute("VACUUM")
    except sqlite3.Error as error:
        # The records are gone from every query already; say that the file still needs a VACUUM.
        log.warning(
            "could not compact %s after a forget (%s): run VACUUM on it when loopbot is stopped", path, error
        )
