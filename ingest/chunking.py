"""Cut loaded sections into chunks with deterministic ids and full provenance (section title, page)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from ingest.loaders import Section
from knowledge.text import split_sentences, starts_unit
from knowledge.types import Chunk, Scope


def chunk_id(scope: str, guild_id: str, owner_id: str | None, source: str, index: int, text: str) -> str:
    """A stable id: the same text at the same place of the same source in one scope, same id.

    That makes re-ingesting an unchanged file a no-op, and lets an edited file's stale chunks be
    found (ids no longer produced) and removed.
    """
    key = "\x1f".join((scope, guild_id, owner_id or "", source, str(index), text))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff00-\uffef]")
# A Japanese character costs the model's tokenizer ~5.7x a Latin one (SmolLM2: 0.64 vs 3.66 characters
# per token on bench/data/answer_quality/kb), so a chunk measured in plain characters held ~1,250
# tokens in Japanese: more than the prompt's whole context budget, one passage and three topics.
CJK_CHAR_COST = 3


def text_length(text: str) -> int:
    """A chunk's size in Latin-character equivalents: CJK characters count ``CJK_CHAR_COST``."""
    return len(text) + (CJK_CHAR_COST - 1) * len(_CJK.findall(text))


def _blocks(text: str) -> list[str]:
    """A section's blocks: paragraphs, and lists and tables each kept whole (consecutive items or
    rows)."""
    blocks: list[str] = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line.strip()]
        if lines and all(starts_unit(line) for line in lines):
            blocks.append("\n".join(lines))  # a list or a table: one block
        else:
            blocks.extend(lines)
    return blocks


def _pack(items: Iterable[str], size: int, joiner: str) -> list[str]:
    """``items`` in order, as few texts of at most ``size`` as fit (an item over ``size`` alone)."""
    packed: list[str] = []
    current = ""
    for item in items:
        if current and text_length(current) + len(joiner) + text_length(item) > size:
            packed.append(current)
            current = item
        else:
            current = f"{current}{joiner}{item}" if current else item
    if current:
        packed.append(current)
    return packed


def _pieces(block: str, size: int) -> list[str]:
    """A block too long for one chunk: whole sentences (or list items, table rows) packed up to
    ``size``; a single sentence over ``size`` is cut at spaces as a last resort."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    lines = "\n" in block
    units: list[str] = []
    for unit in block.split("\n") if lines else split_sentences(block):
        if text_length(unit) <= size:
            units.append(unit)
            continue
        splitter = RecursiveCharacterTextSplitter(
            chunk_size=size, chunk_overlap=0, separators=["、", ", ", " ", ""], length_function=text_length
        )
        units += splitter.split_text(unit)
    return _pack(units, size, "\n" if lines else " ")


def section_texts(section: Section, size: int) -> list[str]:
    """The chunk texts of one section: the whole section when it fits ``size``, else its blocks
    packed in order, a list or table kept whole while it fits, a long paragraph split between
    sentences. Each begins with the section's heading (``## Title``), which the embedder reads with
    the text; the prompt drops the ``#`` marks."""
    heading = f"## {section.title}\n\n" if section.title else ""
    budget = max(size - text_length(heading), size // 2)
    body = section.text.strip()
    if text_length(body) <= budget:
        return [heading + body] if body else []
    pieces = [
        p
        for block in _blocks(body)
        for p in (_pieces(block, budget) if text_length(block) > budget else [block])
    ]
    return [heading + text for text in _pack(pieces, budget, "\n\n")]


def chunk_sections(
    sections: Sequence[Section],
    *,
    source: str,
    scope: Scope,
    guild_id: str,
    owner_id: str | None = None,
    chunk_size: int = 800,
) -> list[Chunk]:
    """Cut every section into chunks (:func:`section_texts`) and wrap them with their provenance.

    A section is never joined to another: a small one is one chunk. ``chunk_size`` is in
    :func:`text_length` units (characters, CJK weighted). Chunks do not overlap: they end at a
    sentence, item or paragraph end and each carries its heading, so no sentence is cut in two."""
    chunks: list[Chunk] = []
    for section in sections:
        for text in section_texts(section, chunk_size):
            chunks.append(
                Chunk(
                    id=chunk_id(scope, guild_id, owner_id, source, len(chunks), text),
                    text=text,
                    source=source,
                    scope=scope,
                    guild_id=guild_id,
                    owner_id=owner_id,
                    author=section.author,
                    timestamp=section.timestamp,
                    section=section.title,
                    page=section.page,
                )
            )
    return chunks
