"""A lexical index (SQLite FTS5) beside the dense store: word-level for Latin text, trigrams for the rest.

The default embedder is English-centred, so a Japanese question rarely finds a Japanese record by
vector alone. Trigrams need no word segmentation: a question shares character trigrams with the
record that answers it in any script. Latin words go through a word-level table instead: a trigram
phrase query walks the doclists of trigrams like "ter" that nearly every English row contains,
which costs ~80 ms at 100k rows, while a word's own doclist is short.

Rows are keyed by Chroma collection name, and every query names the collections it may read, so
scoping is the same as in the dense store.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

# Words that match almost every English row and only slow the ranking down.
_STOPWORDS = frozenset(
    """a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers him his how i if in into is it its just me more most my
    no nor not now of off on once only or other our ours out over own same she should so some
    such than that the their theirs them then there these they this those through to too under
    until up very was we were what when where which while who whom why will with would you your
    yours tell know please""".split()  # noqa: SIM905 - a word list reads better as text
)
_WORD = re.compile(r"[^\W_]+")
_ASCII_SPLIT = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9]+")
# "Tamaの体重" is one token to unicode61: split Latin from other scripts so "tama" is a word of its own.
_SCRIPT_BOUNDARY = re.compile(r"(?<=[A-Za-z0-9])(?=[^\x00-\x7f])|(?<=[^\x00-\x7f])(?=[A-Za-z0-9])")
MAX_TERMS = 32
TABLES = {"words": "unicode61 remove_diacritics 2", "grams": "trigram"}


def query_terms(text: str) -> dict[str, list[str]]:
    """Searchable terms of free text per table, in order, without duplicates (at most ``MAX_TERMS`` each).

    ``words``: ASCII words of 3+ characters (stopwords dropped) and numbers of 2+ digits.
    ``grams``: runs of other scripts (Japanese, Chinese, ...) have no spaces between words, so they
    become overlapping trigrams.
    """
    words: list[str] = []
    grams: list[str] = []
    for word in _WORD.findall(text):
        for part in _ASCII_SPLIT.findall(word):
            if part.isascii():
                lowered = part.lower()
                if (len(part) >= 3 or (part.isdigit() and len(part) >= 2)) and lowered not in _STOPWORDS:
                    words.append(lowered)
            else:
                grams.extend(part[i : i + 3] for i in range(len(part) - 2))
    return {
        "words": list(dict.fromkeys(words))[:MAX_TERMS],
        "grams": list(dict.fromkeys(grams))[:MAX_TERMS],
    }


def fts_query(terms: Sequence[str]) -> str:
    """An FTS5 query: an OR of quoted terms, ``""`` if none."""
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


class LexicalIndex:
    """FTS5 word and trigram indexes of chunk texts, one row per chunk id, tagged with its collection.

    Terms found in more than ``max_df`` of the rows are skipped once the index has ``prune_above``
    rows: BM25 must score every row a term matches, and a word every post contains ("cat" in a cat
    server) costs the most and tells the least.
    """

    def __init__(
        self, path: Path | str = ":memory:", *, max_df: float = 0.2, prune_above: int = 1000
    ) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the bot's worker threads; the lock serialises its use.
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._lock = threading.Lock()
        self.max_df = max_df
        self.prune_above = prune_above
        self._df: dict[tuple[str, str], int] = {}  # (table, term) -> rows; cleared by every write
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA secure_delete=ON")  # deleted text is overwritten, not left in free pages
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS entries (rowid INTEGER PRIMARY KEY, chunk_id TEXT UNIQUE NOT NULL,"
                " collection TEXT NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS entries_collection ON entries(collection)")
            for table, tokenizer in TABLES.items():
                self._db.execute(
                    f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING fts5(text, tokenize='{tokenizer}')"
                )
                self._db.execute(
                    f"CREATE VIRTUAL TABLE IF NOT EXISTS {table}_vocab USING fts5vocab({table}, 'row')"
                )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def upsert(self, collection: str, items: Iterable[tuple[str, str]]) -> None:
        """Index ``(chunk_id, text)`` pairs under ``collection``, replacing rows with the same id."""
        with self._lock, self._db:
            self._df.clear()
            for chunk_id, text in items:
                self._delete_one(chunk_id)
                cursor = self._db.execute(
                    "INSERT INTO entries (chunk_id, collection) VALUES (?, ?)", (chunk_id, collection)
                )
                for table in TABLES:
                    indexed = _SCRIPT_BOUNDARY.sub(" ", text) if table == "words" else text
                    self._db.execute(
                        f"INSERT INTO {table} (rowid, text) VALUES (?, ?)", (cursor.lastrowid, indexed)
                    )

    def _delete_one(self, chunk_id: str) -> None:
        row = self._db.execute("SELECT rowid FROM entries WHERE chunk_id = ?", (chunk_id,)).fetchone()
        if row:
            for table in TABLES:
                self._db.execute(f"DELETE FROM {table} WHERE rowid = ?", row)
            self._db.execute("DELETE FROM entries WHERE rowid = ?", row)

    def delete(self, chunk_ids: Iterable[str]) -> None:
        """Remove these chunk ids (unknown ids are ignored)."""
        with self._lock, self._db:
            self._df.clear()
            for chunk_id in chunk_ids:
                self._delete_one(chunk_id)

    def delete_collection(self, collection: str) -> int:
        """Remove every row of a collection, leaving no trace of its text in the file; return how many."""
        with self._lock, self._db:
            self._df.clear()
            rows = self._db.execute(
                "SELECT rowid FROM entries WHERE collection = ?", (collection,)
            ).fetchall()
            for table in TABLES:
                self._db.executemany(f"DELETE FROM {table} WHERE rowid = ?", rows)
                if rows:
                    # A forgotten member's terms must not linger in old index segments: merge them away.
                    self._db.execute(f"INSERT INTO {table}({table}) VALUES ('optimize')")
            self._db.execute("DELETE FROM entries WHERE collection = ?", (collection,))
        if rows:
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # old page versions leave the WAL too
        return len(rows)

    def search(
        self, text: str, collections: Sequence[str], k: int, *, tables: Sequence[str] = tuple(TABLES)
    ) -> dict[str, list[tuple[str, str, float]]]:
        """Per table (``words``, ``grams``) with terms in ``text``: the best ``k`` ``(chunk_id, collection,
        bm25)`` rows among ``collections``, best first (bm25 is negative: lower is better)."""
        if not collections:
            return {}
        terms = query_terms(text)
        marks = ",".join("?" * len(collections))
        found: dict[str, list[tuple[str, str, float]]] = {}
        with self._lock:
            for table in tables:
                query = fts_query(self._selective(table, terms[table]))
                if not query:
                    continue
                sql = (
                    f"SELECT e.chunk_id, e.collection, bm25({table}) AS r FROM {table}"
                    f" JOIN entries e ON e.rowid = {table}.rowid"
                    f" WHERE {table} MATCH ? AND e.collection IN ({marks}) ORDER BY r LIMIT ?"
                )
                try:
                    rows = self._db.execute(sql, (query, *collections, k)).fetchall()
                except sqlite3.OperationalError:
                    continue  # a query FTS5 cannot parse finds nothing lexically; the dense side still runs
                found[table] = [(str(r[0]), str(r[1]), float(r[2])) for r in rows]
        return found

    def _selective(self, table: str, terms: list[str]) -> list[str]:
        """Drop terms found in more than ``max_df`` of all rows (caller holds the lock)."""
        if not terms:
            return terms
        total = int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])
        if total < self.prune_above:
            return terms  # small index: every term is cheap, and in a handful of rows none is "common"
        kept = []
        for term in terms:
            key = (table, term)
            if key not in self._df:
                row = self._db.execute(f"SELECT doc FROM {table}_vocab WHERE term = ?", (term,)).fetchone()
                self._df[key] = int(row[0]) if row else 0
            if 0 < self._df[key] <= self.max_df * total:  # 0: no row has it, nothing to match
                kept.append(term)
        return kept

    def count(self, collection: str | None = None) -> int:
        """How many rows (in one collection, or in all)."""
        with self._lock:
            if collection is None:
                return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])
            sql = "SELECT count(*) FROM entries WHERE collection = ?"
            return int(self._db.execute(sql, (collection,)).fetchone()[0])
