"""The records the knowledge base stores and returns: chunks, hits and add reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Scope = Literal["community", "personal"]


@dataclass(frozen=True)
class Chunk:
    """One retrievable passage with where it came from and who may see it.

    ``scope="community"`` chunks are visible to every member of ``guild_id``; ``scope="personal"``
    chunks belong to ``owner_id`` in ``guild_id`` and only ever reach that member's answers.
    """

    id: str
    text: str
    source: str
    scope: Scope
    guild_id: str
    owner_id: str | None = None
    author: str | None = None
    timestamp: str | None = None
    section: str | None = None  # the heading the passage is under, cited with it
    page: int | None = None  # a PDF's page

    def metadata(self) -> dict[str, str | int]:
        """The chunk's fields except ``id`` and ``text`` as Chroma metadata (no ``None`` values)."""
        data = asdict(self)
        return {key: value for key, value in data.items() if key not in ("id", "text") and value is not None}

    def citation(self) -> str:
        """Where the passage is: its source, page and section (``wiki.md › Membership``)."""
        return citation(self.source, self.section, self.page)


def citation(source: str, section: str | None = None, page: int | None = None) -> str:
    """How a passage is cited: ``wiki.md › Membership``, ``handbook.pdf p. 2 › Winter Riding``."""
    where = source + (f" p. {page}" if page else "")
    return f"{where} › {section}" if section else where


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk and its fused relevance score (higher is better).

    ``similarity`` is the dense cosine between question and chunk (None when only the lexical side
    found it); ``lexical`` says whether the lexical index matched it. The answer chain's relevance
    floor reads both."""

    chunk: Chunk
    score: float
    similarity: float | None = None
    lexical: bool = False


@dataclass
class AddReport:
    """What an :meth:`KnowledgeBase.add` or ``replace_source`` call changed."""

    added: int = 0
    unchanged: int = 0
    replaced: int = 0  # old chunks removed because their source was re-ingested with new content
    sources: list[str] = field(default_factory=list)

    def merge(self, other: AddReport) -> None:
        """Add ``other``'s counts to this report."""
        self.added += other.added
        self.unchanged += other.unchanged
        self.replaced += other.replaced
        self.sources.extend(s for s in other.sources if s not in self.sources)
