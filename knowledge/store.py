"""The knowledge base: Chroma collections per scope, plus a lexical index, fused at query time.

Scopes are collections, not metadata filters (:mod:`knowledge.scopes`): guild G's community posts
live in ``c-G`` and member U's personal records in ``p-G-U``. A scoped query is two plain nearest-neighbour queries merged
(a ``where`` filter is 25-80x slower at 100k chunks), and a member's records can only be read by a
query that names that member's collection: nothing else ever opens it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from knowledge.embeddings import embedder_name
from knowledge.errors import KnowledgeError
from knowledge.lexical import LexicalIndex
from knowledge.lock import StoreLock, compact_store_files
from knowledge.retrieval import lexical_rankings, rrf_fuse
from knowledge.scopes import (
    PERSONAL,
    Collections,
    check_id,
    chunk_from,
    collection_for,
    community_collection,
    mostly_non_latin,
    personal_collection,
)
from knowledge.types import AddReport, Chunk, Hit

log = logging.getLogger(__name__)

BATCH = 64  # chunks embedded and written per call: keeps progress moving and Chroma batches small


class KnowledgeBase:
    """Community posts and personal records in Chroma, searched densely and lexically.

    ``client`` is a chromadb client (``PersistentClient`` or ``HttpClient``); ``embeddings`` a
    LangChain ``Embeddings``. ``lexical_path`` (a SQLite file, or ``":memory:"``) turns on the
    trigram index fused with the dense ranking; ``None`` searches densely only. ``lock`` guards an
    embedded store against a second writing process; it is taken at the first write or by
    :meth:`claim`.

    Retrieval: ``candidates`` per ranking (dense over the scope's collections merged by distance;
    lexical BM25), fused by reciprocal rank with constant ``rrf_k``. Lexical rows scoring under
    ``lexical_floor`` x the best BM25 are dropped. The trigram ranking (non-Latin scripts) counts
    fully; the Latin word ranking counts ``latin_lexical_weight``, 0 by default: on the labelled set
    (tests/data, bench/knowledge_recall.py) any weight above 0 lowered English recall, because
    MiniLM already ranks English paraphrases well. Raise it for an embedder weak in your language.
    For a query mostly in another script the dense ranking counts ``non_latin_dense_weight`` (0.25):
    MiniLM reads Japanese poorly, and at equal weight its guesses outvoted the trigrams' (labelled set:
    Japanese recall@1 0.80 at 1.0, 0.85 at 0.25; bench/answer_quality.py --evidence-only, Japanese
    answer key in the passages 0.75 → 0.85; weight 0.5: 0.80, weight 0: 0.85 but fewer keys quoted).
    Dense hits below ``min_similarity`` cosine are dropped. ``persist_dir`` (the embedded store's
    directory) lets :meth:`forget_user` compact Chroma's files so deleted text leaves the disk.
    """

    def __init__(
        self,
        client: Any,
        embeddings: Any,
        *,
        lexical_path: Path | str | None = None,
        lock: StoreLock | None = None,
        persist_dir: Path | str | None = None,
        candidates: int = 20,
        rrf_k: int = 60,
        min_similarity: float = 0.0,
        latin_lexical_weight: float = 0.0,
        lexical_floor: float = 0.3,
        non_latin_dense_weight: float = 0.25,
    ) -> None:
        self.client = client
        self.embeddings = embeddings
        self.embedder = embedder_name(embeddings)
        self.lexical = LexicalIndex(lexical_path) if lexical_path is not None else None
        self.lock = lock
        self.persist_dir = Path(persist_dir) if persist_dir is not None else None
        self.candidates = candidates
        self.rrf_k = rrf_k
        self.latin_lexical_weight = latin_lexical_weight
        self.lexical_floor = lexical_floor
        self.non_latin_dense_weight = non_latin_dense_weight
        self.min_similarity = min_similarity  # dense hits below this cosine are noise, not context
        self._collections = Collections(client, embeddings, self.embedder)
        # The bot retrieves twice per question (privacy probe, then the answer): embed once.
        self._embed_query = functools.lru_cache(maxsize=256)(self._embed_uncached)

    # --- plumbing ---------------------------------------------------------------------------
    def claim(self) -> None:
        """Become this store's writer now (the bot does this at start so a CLI ingest fails fast)."""
        if self.lock is not None:
            self.lock.acquire()

    def close(self) -> None:
        """Release the writer lock and close the lexical index."""
        if self.lock is not None:
            self.lock.release()
        if self.lexical is not None:
            self.lexical.close()

    def _store(self, name: str, *, create: bool) -> Any | None:
        """The LangChain ``Chroma`` wrapper of one collection, or ``None`` if it does not exist."""
        return self._collections.open(name, create=create)

    def _embed_uncached(self, query: str) -> tuple[float, ...]:
        return tuple(self.embeddings.embed_query(query))

    def embed_query(self, query: str) -> tuple[float, ...]:
        """``query``'s embedding, cached: retrieval and adapter routing embed a question once."""
        return self._embed_query(query)

    # --- writing ----------------------------------------------------------------------------
    def add(self, chunks: Sequence[Chunk], *, on_progress: Callable[[int], None] | None = None) -> AddReport:
        """Store chunks not already present (by id); return added / unchanged counts. Idempotent."""
        report = AddReport()
        if not chunks:
            return report
        self.claim()
        groups: dict[str, list[Chunk]] = {}
        for chunk in chunks:
            if not chunk.text.strip():
                raise KnowledgeError(f"chunk {chunk.id} from {chunk.source} is empty: drop it before adding")
            groups.setdefault(collection_for(chunk), []).append(chunk)
        for name, group in groups.items():
            store = self._store(name, create=True)
            assert store is not None  # create=True either returns a store or raises
            unique = list({c.id: c for c in group}.values())
            present = set(store.get(ids=[c.id for c in unique], include=[])["ids"])
            report.unchanged += len(present)
            fresh = [c for c in unique if c.id not in present]
            self._write(name, store, fresh, on_progress)
            report.added += len(fresh)
            if on_progress is not None and present:
                on_progress(len(present))
        report.sources = list(dict.fromkeys(c.source for c in chunks))
        return report

    def _write(
        self, name: str, store: Any, chunks: Sequence[Chunk], on_progress: Callable[[int], None] | None
    ):
        for start in range(0, len(chunks), BATCH):
            batch = chunks[start : start + BATCH]
            store.add_texts(
                [c.text for c in batch], metadatas=[c.metadata() for c in batch], ids=[c.id for c in batch]
            )
            if self.lexical is not None:
                self.lexical.upsert(name, ((c.id, c.text) for c in batch))
            if on_progress is not None:
                on_progress(len(batch))

    def replace_source(
        self,
        source: str,
        chunks: Sequence[Chunk],
        *,
        guild_id: str,
        owner_id: str | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> AddReport:
        """Make ``chunks`` the whole content of ``source`` in one scope: add new ones, drop stale ones.

        Re-ingesting an unchanged file adds nothing; an edited file's old chunks are removed.
        ``owner_id`` selects the member's personal scope; without it the guild's community scope.
        """
        name = personal_collection(guild_id, owner_id) if owner_id else community_collection(guild_id)
        for chunk in chunks:
            if chunk.source != source or collection_for(chunk) != name:
                raise KnowledgeError(
                    f"chunk {chunk.id} is not from {source} in {name}: replace one source at a time"
                )
        self.claim()
        store = self._store(name, create=bool(chunks))
        stale: list[str] = []
        if store is not None:
            old = set(store.get(where={"source": source}, include=[])["ids"])
            stale = sorted(old - {c.id for c in chunks})
        report = self.add(chunks, on_progress=on_progress)
        if stale and store is not None:
            store.delete(ids=stale)
            if self.lexical is not None:
                self.lexical.delete(stale)
        report.replaced = len(stale)
        report.sources = [source]
        return report

    def delete_source(self, source: str, *, guild_id: str | None = None, owner_id: str | None = None) -> int:
        """Delete every chunk of ``source``; return how many.

        Without ``owner_id`` this touches community posts (of ``guild_id``, or of every guild);
        with it, only that member's personal records.
        """
        self.claim()
        names = []
        for name in self._collections.names():
            if owner_id is None:
                wanted = name == community_collection(guild_id) if guild_id else name.startswith("c-")
            else:
                match = PERSONAL.fullmatch(name)
                wanted = bool(
                    match
                    and match[2] == check_id(owner_id, "user id")
                    and (guild_id is None or match[1] == guild_id)
                )
            if wanted:
                names.append(name)
        removed = 0
        for name in names:
            store = self._store(name, create=False)
            if store is None:
                continue
            ids = store.get(where={"source": source}, include=[])["ids"]
            if ids:
                store.delete(ids=ids)
                if self.lexical is not None:
                    self.lexical.delete(ids)
            removed += len(ids)
        return removed

    def forget_user(self, user_id: str) -> int:
        """Delete every personal record of a member in every guild; return how many records."""
        user_id = check_id(user_id, "user id")
        self.claim()
        removed = 0
        for name in self._collections.names():
            match = PERSONAL.fullmatch(name)
            if not match or match[2] != user_id:
                continue
            removed += self.client.get_collection(name).count()
            self.client.delete_collection(name)
            self._collections.forget(name)
            if self.lexical is not None:
                self.lexical.delete_collection(name)
        if removed:
            self._scrub()
        log.info("forgot %d personal records of one member", removed)  # never log the id with content
        return removed

    def forget_author(self, user_id: str) -> int:
        """Delete the community posts a member wrote (their accepted corrections) in every guild;
        return how many. Called by a forget after :meth:`forget_user`."""
        user_id = check_id(user_id, "user id")
        self.claim()
        removed = 0
        for name in self._collections.names():
            if not name.startswith("c-"):
                continue
            collection = self.client.get_collection(name)
            ids = collection.get(where={"author": user_id}, include=[])["ids"]
            if ids:
                collection.delete(ids=ids)
                self._collections.forget(name)
                if self.lexical is not None:
                    self.lexical.delete(ids)
                removed += len(ids)
        if removed:
            self._scrub()
        return removed

    def member_chunks(self, user_id: str, *, guild_id: str | None = None) -> list[Chunk]:
        """What the store holds of one member: their personal records and the community posts they
        wrote (accepted corrections), in ``guild_id`` or every guild. Reads by collection name and
        metadata: nothing is embedded."""
        user_id = check_id(user_id, "user id")
        found: list[Chunk] = []
        for name in sorted(self._collections.names()):
            match = PERSONAL.fullmatch(name)
            if match and match[2] == user_id and (guild_id is None or match[1] == guild_id):
                got = self.client.get_collection(name).get(include=["documents", "metadatas"])
            elif name.startswith("c-") and (guild_id is None or name == community_collection(guild_id)):
                got = self.client.get_collection(name).get(
                    where={"author": user_id}, include=["documents", "metadatas"]
                )
            else:
                continue
            for chunk_id, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=False):
                found.append(chunk_from(chunk_id, text or "", meta or {}))
        return found

    def _scrub(self) -> None:
        """Remove deleted text from an embedded store's files, not just from its tables."""
        if self.persist_dir is not None:
            compact_store_files(self.persist_dir)

    # --- reading ----------------------------------------------------------------------------
    def scope_collections(self, guild_id: str, user_id: str | None) -> list[str]:
        """The collections a question from ``user_id`` in ``guild_id`` may read, and no others."""
        names = [community_collection(guild_id)]
        if user_id is not None:
            names.append(personal_collection(guild_id, user_id))
        return names

    def similarities(self, query: str, texts: list[str]) -> list[float]:
        """Cosine of ``query`` with each of ``texts`` under the store's embedder (unit vectors)."""
        if not texts:
            return []
        vector = self._embed_query(query)
        return [
            sum(a * b for a, b in zip(vector, other, strict=True))
            for other in self.embeddings.embed_documents(texts)
        ]

    def search(self, query: str, *, guild_id: str, user_id: str | None, k: int = 5) -> list[Hit]:
        """The ``k`` best chunks for ``query`` among the guild's posts and the asker's own records."""
        if k < 1:
            raise KnowledgeError(f"k must be at least 1, got {k}")
        names = self.scope_collections(guild_id, user_id)
        stores = {name: self._store(name, create=False) for name in names}
        if not any(stores.values()):
            return []
        vector = self._embed_query(query)
        return self.search_by_vector(query, vector, guild_id=guild_id, user_id=user_id, k=k)

    def search_by_vector(
        self, query: str, vector: Sequence[float], *, guild_id: str, user_id: str | None, k: int = 5
    ) -> list[Hit]:
        """:meth:`search` with the query already embedded (benchmarks time the store path alone)."""
        names = self.scope_collections(guild_id, user_id)
        found: dict[str, Chunk] = {}
        similarity: dict[str, float] = {}
        lexical_ids: set[str] = set()
        # One embedder for every collection, so distances compare across them: the scopes' dense
        # results merge into one ranking before fusion (two lists would give both #1s equal weight).
        dense: list[tuple[float, str]] = []
        for name in names:
            store = self._store(name, create=False)
            if store is None:
                continue
            try:
                results = store.similarity_search_by_vector_with_relevance_scores(
                    list(vector), k=self.candidates
                )
            except Exception as error:  # noqa: BLE001 - chromadb has no common base for "collection gone"
                if "does not exist" not in str(error) and type(error).__name__ != "NotFoundError":
                    raise
                # Another process (behind a Chroma server) deleted it, e.g. a forget: nothing to read.
                self._collections.forget(name)
                continue
            for doc, distance in results:
                # Vectors are unit length and Chroma's L2 is squared, so cosine = 1 - d / 2.
                if 1.0 - distance / 2.0 >= self.min_similarity:
                    dense.append((distance, doc.id))
                    similarity[doc.id] = 1.0 - distance / 2.0
                    found[doc.id] = chunk_from(doc.id, doc.page_content, doc.metadata)
        rankings = [[chunk_id for _, chunk_id in sorted(dense)[: self.candidates]]]
        weights = [self.non_latin_dense_weight if mostly_non_latin(query) else 1.0]
        if self.lexical is not None:
            missing: dict[str, list[str]] = {}
            lexical = lexical_rankings(
                self.lexical, query, names, self.candidates, self.lexical_floor, self.latin_lexical_weight
            )
            for ranking in lexical:
                rankings.append(ranking.ids)
                weights.append(ranking.weight)
                lexical_ids.update(ranking.ids)
                for chunk_id in ranking.ids:
                    if chunk_id not in found:
                        missing.setdefault(ranking.collections[chunk_id], []).append(chunk_id)
            self._fetch(missing, found)
        fused = rrf_fuse(rankings, k=self.rrf_k, weights=weights)
        return [
            Hit(found[i], score, similarity=similarity.get(i), lexical=i in lexical_ids)
            for i, score in fused
            if i in found
        ][:k]

    def _fetch(self, wanted: dict[str, list[str]], into: dict[str, Chunk]) -> None:
        for name, ids in wanted.items():
            store = self._store(name, create=False)
            if store is None:
                continue
            got = store.get(ids=ids)
            for chunk_id, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=False):
                into[chunk_id] = chunk_from(chunk_id, text, meta or {})

    def get_source_ids(self, source: str, *, guild_id: str, owner_id: str | None = None) -> list[str]:
        """Chunk ids currently stored for ``source`` in one scope (for tests and tooling)."""
        name = personal_collection(guild_id, owner_id) if owner_id else community_collection(guild_id)
        store = self._store(name, create=False)
        return [] if store is None else list(store.get(where={"source": source}, include=[])["ids"])

    def stats(self) -> dict[str, Any]:
        """Counts per scope: community chunks per guild, personal records and members (no member ids)."""
        return {
            "embedder": self.embedder,
            **self._collections.counts(),
            "lexical_rows": self.lexical.count() if self.lexical is not None else None,
        }
