"""Split loaded sections into chunks with deterministic ids and full provenance."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from ingest.loaders import Section
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


def chunk_sections(
    sections: Sequence[Section],
    *,
    source: str,
    scope: Scope,
    guild_id: str,
    owner_id: str | None = None,
    chunk_size: int = 800,
    chunk_overlap: int = 100,
) -> list[Chunk]:
    """Split every section with a recursive character splitter and wrap the pieces as chunks.

    ``chunk_size`` and ``chunk_overlap`` are in :func:`text_length` units (characters, CJK weighted)."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size,
        chunk_overlap=min(chunk_overlap, chunk_size // 2),
        # CJK text has no spaces: let it break at its own sentence marks before falling back to chars.
        separators=["\n\n", "\n", "。", ". ", "、", " ", ""],
        keep_separator="end",
        length_function=text_length,
    )
    chunks: list[Chunk] = []
    for section in sections:
        for piece in splitter.split_text(section.text):
            text = piece.strip()
            if not text:
                continue
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
                )
            )
    return chunks
