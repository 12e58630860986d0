"""Which collection holds what: a guild's community posts in ``c-<guild>``, a member's personal records
in ``p-<guild>-<member>``; the collections a store has opened (:class:`Collections`), and a chunk read
back from a collection's metadata."""

from __future__ import annotations

import re
import threading
from typing import Any

from knowledge.errors import KnowledgeError
from knowledge.types import Chunk

_ID = re.compile(r"[A-Za-z0-9]{1,100}")
PERSONAL = re.compile(r"p-([A-Za-z0-9]+)-([A-Za-z0-9]+)")


def check_id(value: str | None, what: str) -> str:
    """Return ``value`` if it is a usable guild/user id (letters and digits), else raise."""
    if value is None or not _ID.fullmatch(str(value)):
        raise KnowledgeError(f"{what} must be 1-100 letters or digits (a Discord id), got {value!r}")
    return str(value)


def community_collection(guild_id: str) -> str:
    """Collection name of a guild's community posts."""
    return f"c-{check_id(guild_id, 'guild id')}"


def personal_collection(guild_id: str, user_id: str) -> str:
    """Collection name of one member's personal records in one guild."""
    return f"p-{check_id(guild_id, 'guild id')}-{check_id(user_id, 'user id')}"


def collection_for(chunk: Chunk) -> str:
    """The collection a chunk belongs in, after checking its scope fields agree."""
    if chunk.scope == "community":
        if chunk.owner_id is not None:
            raise KnowledgeError(f"community chunk {chunk.id} has an owner: use scope 'personal' for records")
        return community_collection(chunk.guild_id)
    if chunk.scope == "personal":
        if not chunk.owner_id:
            raise KnowledgeError(f"personal chunk {chunk.id} has no owner_id: say whose record it is")
        return personal_collection(chunk.guild_id, chunk.owner_id)
    raise KnowledgeError(f"chunk {chunk.id} has scope {chunk.scope!r}: use 'community' or 'personal'")


def mostly_non_latin(text: str) -> bool:
    """More than half of ``text``'s letters are outside ASCII (Japanese, Chinese, ...)."""
    letters = [c for c in text if c.isalpha()]
    return sum(not c.isascii() for c in letters) * 2 > len(letters)


def chunk_from(chunk_id: str, text: str, meta: dict[str, Any]) -> Chunk:
    """A stored chunk as a :class:`Chunk` (its id, text and the metadata it was written with)."""
    return Chunk(
        id=chunk_id,
        text=text,
        source=str(meta.get("source", "")),
        scope=meta.get("scope", "community"),
        guild_id=str(meta.get("guild_id", "")),
        owner_id=meta.get("owner_id"),
        author=meta.get("author"),
        timestamp=meta.get("timestamp"),
        section=meta.get("section"),
        page=int(meta["page"]) if isinstance(meta.get("page"), int | float) else None,
    )


class Collections:
    """The LangChain ``Chroma`` wrappers of a client's collections, opened once each (thread-safe);
    each collection records the embedder that wrote it, and another one is refused."""

    def __init__(self, client: Any, embeddings: Any, embedder: str) -> None:
        self.client = client
        self.embeddings = embeddings
        self.embedder = embedder
        self._stores: dict[str, Any] = {}
        self._stores_lock = threading.Lock()

    def open(self, name: str, *, create: bool) -> Any | None:
        """The LangChain ``Chroma`` wrapper of one collection, or ``None`` if it does not exist."""
        from chromadb.errors import NotFoundError
        from langchain_chroma import Chroma

        with self._stores_lock:
            if name in self._stores:
                return self._stores[name]
            try:
                store = Chroma(
                    collection_name=name,
                    client=self.client,
                    embedding_function=self.embeddings,
                    collection_metadata={"embedder": self.embedder},
                    create_collection_if_not_exists=create,
                )
            except (NotFoundError, ValueError):
                if create:
                    raise
                return None  # nobody has written to this scope yet
            built_with = (store._collection.metadata or {}).get("embedder")
            if built_with and built_with != self.embedder:
                raise KnowledgeError(
                    f"collection {name} was built with the embedder {built_with!r} but {self.embedder!r} is "
                    "configured: set the embedding model back, or delete the store and re-ingest"
                )
            self._stores[name] = store
            return store

    def forget(self, name: str) -> None:
        """Drop the wrapper of a deleted collection."""
        with self._stores_lock:
            self._stores.pop(name, None)

    def names(self) -> list[str]:
        """Every collection of the client."""
        return [c if isinstance(c, str) else c.name for c in self.client.list_collections()]

    def counts(self) -> dict[str, Any]:
        """Community chunks (in all and per guild), personal records, and how many members have any."""
        community: dict[str, int] = {}
        personal = 0
        members: set[str] = set()
        for name in self.names():
            count = self.client.get_collection(name).count()
            if name.startswith("c-"):
                community[name[2:]] = count
            elif match := PERSONAL.fullmatch(name):
                personal += count
                members.add(match[2])
        return {
            "community_chunks": sum(community.values()),
            "community_by_guild": community,
            "personal_records": personal,
            "members_with_records": len(members),
        }
