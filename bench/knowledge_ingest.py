"""Ingestion throughput with the default embedder: files → chunks → embeddings → Chroma + FTS5.

    python bench/knowledge_ingest.py [--chunks 300]   -> bench/results/knowledge_ingest.json

Synthetic ~80-word paragraphs in Markdown files, chunked at the default 800 characters, into a
temp-dir store; a second run of the same files measures the idempotent re-ingest (no embedding).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from _common import machine, write

_VOCAB_TEXT = (
    "cat kitten litter vet food water sleep claws brush toy window tuna vaccine flea bowl carrier sofa scratch "
    "purr meow weight fur ear tail the a and to of with every day week owner play hours often care healthy "
    "indoor outdoor breed senior young treat meal clean box fresh check teeth groom warm quiet safe"
)
VOCAB = _VOCAB_TEXT.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=300)
    args = parser.parse_args()

    import chromadb

    from ingest import IngestLimits, ingest_paths
    from knowledge.embeddings import load_embeddings
    from knowledge.store import KnowledgeBase

    rng = random.Random(0)
    started = time.perf_counter()
    embeddings = load_embeddings()
    load_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docs = root / "docs"
        docs.mkdir()
        per_file = 30
        for f in range(args.chunks // per_file):
            # One paragraph ~ 80 words ~ 500 characters; with 800-character chunks each paragraph is one chunk.
            paragraphs = [" ".join(rng.choices(VOCAB, k=80)).capitalize() + "." for _ in range(per_file)]
            (docs / f"doc{f:03d}.md").write_text("\n\n".join(paragraphs), encoding="utf-8")
        kb = KnowledgeBase(
            chromadb.PersistentClient(str(root / "chroma")), embeddings, lexical_path=root / "lex.db"
        )
        limits = IngestLimits(max_files=1000)
        started = time.perf_counter()
        first = ingest_paths(kb, [docs], scope="community", guild_id="1", limits=limits)
        first_seconds = time.perf_counter() - started
        started = time.perf_counter()
        again = ingest_paths(kb, [docs], scope="community", guild_id="1", limits=limits)
        again_seconds = time.perf_counter() - started
        texts = [c.text for c in first.chunks]
        started = time.perf_counter()
        embeddings.embed_documents(texts)
        embed_seconds = time.perf_counter() - started
        kb.close()
    chunks = len(first.chunks)
    write(
        "knowledge_ingest",
        {
            "machine": machine(),
            "files": first.files,
            "chunks": chunks,
            "mean_chunk_words": round(sum(len(t.split()) for t in texts) / chunks, 1),
            "embedder_load_seconds": round(load_seconds, 1),
            "ingest_seconds": round(first_seconds, 1),
            "ingest_chunks_per_second": round(chunks / first_seconds, 1),
            "embedding_only_chunks_per_second": round(chunks / embed_seconds, 1),
            "reingest_seconds_no_changes": round(again_seconds, 2),
            "reingest_added": again.stored.added if again.stored else None,
        },
    )


if __name__ == "__main__":
    main()
