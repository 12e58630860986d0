"""Scoped retrieval latency at 10k and 100k chunks: the real store and query path (Chroma collections
per scope + FTS5 trigram index + RRF fusion), with random-ish vectors and synthetic text.

    python bench/knowledge_retrieval.py [--sizes 10000 100000] [--queries 200] [--rebuild]

Stores are built once and cached under bench/out/ (building 100k takes minutes). The query vector
is given (``search_by_vector``): the store path is what scales with the corpus; the real embedder's
per-query cost is measured separately and reported beside it. Writes bench/results/knowledge_retrieval.json.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import statistics
import time
from pathlib import Path

from _common import machine, write

OUT = Path(__file__).resolve().parent / "out" / "knowledge_retrieval"
DIM = 384
GUILD, MEMBER, OTHERS = "1", "42", 200  # the asker has records; 200 other members have theirs
WORDS = [
    "cat",
    "kitten",
    "litter",
    "vet",
    "food",
    "water",
    "sleep",
    "claws",
    "brush",
    "toy",
    "window",
    "tuna",
    "vaccine",
    "flea",
    "bowl",
    "carrier",
    "sofa",
    "scratch",
    "purr",
    "meow",
    "weight",
    "fur",
    "ear",
    "tail",
] + [f"w{i:04d}" for i in range(3000)]
JA = ["猫", "子猫", "トイレ", "病院", "ご飯", "水", "眠る", "爪", "ブラシ", "おもちゃ", "体重", "毛玉"]


class HashEmbeddings:
    """Deterministic pseudo-random unit vectors from a text's hash: cheap stand-in vectors at scale."""

    model_name = "bench-hash-384"

    def _vector(self, text: str) -> list[float]:
        rng = random.Random(hashlib.sha256(text.encode()).digest())
        values = [rng.gauss(0, 1) for _ in range(DIM)]
        norm = sum(v * v for v in values) ** 0.5
        return [v / norm for v in values]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


def synthetic_text(rng: random.Random) -> str:
    words = rng.choices(WORDS[:24], k=6) + rng.choices(WORDS, k=60)
    rng.shuffle(words)
    text = " ".join(words)
    if rng.random() < 0.1:
        text += " " + "".join(rng.choices(JA, k=12))
    return text


def open_kb(path: Path):
    import chromadb
    from chromadb.config import Settings

    from knowledge.store import KnowledgeBase

    client = chromadb.PersistentClient(str(path / "chroma"), settings=Settings(anonymized_telemetry=False))
    return KnowledgeBase(client, HashEmbeddings(), lexical_path=path / "lexical.db")


def build(size: int, path: Path) -> float:
    from knowledge.types import Chunk

    if path.exists():
        shutil.rmtree(path)
    kb = open_kb(path)
    rng = random.Random(size)
    started = time.perf_counter()
    batch: list[Chunk] = []
    personal = 10 * (OTHERS + 1)
    for i in range(size - personal):
        batch.append(
            Chunk(
                id=f"c{i}", text=synthetic_text(rng), source=f"s{i // 50}", scope="community", guild_id=GUILD
            )
        )
        if len(batch) == 2000:
            kb.add(batch)
            batch = []
            print(f"  {i + 1}/{size}", flush=True)
    for member in [MEMBER, *(str(1000 + m) for m in range(OTHERS))]:
        batch.extend(
            Chunk(
                id=f"p{member}-{j}",
                text=synthetic_text(rng),
                source="remember",
                scope="personal",
                guild_id=GUILD,
                owner_id=member,
            )
            for j in range(10)
        )
    kb.add(batch)
    seconds = time.perf_counter() - started
    (path / "built").write_text(str(seconds))
    kb.close()
    return seconds


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def measure(size: int, queries: int, rebuild: bool) -> dict:
    path = OUT / str(size)
    build_seconds = None
    if rebuild or not (path / "built").exists():
        print(f"building {size} chunks in {path}")
        build_seconds = build(size, path)
    kb = open_kb(path)
    rng = random.Random(7)
    embed = HashEmbeddings()
    texts = [" ".join(rng.choices(WORDS[:24], k=2) + rng.choices(WORDS, k=4)) for _ in range(queries)]
    texts += ["".join(rng.choices(JA, k=5)) + "は？" for _ in range(queries // 4)]
    vectors = [embed.embed_query(t) for t in texts]
    for text, vector in zip(texts[:10], vectors[:10], strict=True):  # warm caches and HNSW pages
        kb.search_by_vector(text, vector, guild_id=GUILD, user_id=MEMBER, k=5)
    total, dense, lexical, leaked = [], [], [], 0
    stores = [kb._store(name, create=False) for name in kb.scope_collections(GUILD, MEMBER)]
    for text, vector in zip(texts, vectors, strict=True):
        started = time.perf_counter()
        hits = kb.search_by_vector(text, vector, guild_id=GUILD, user_id=MEMBER, k=5)
        total.append(time.perf_counter() - started)
        leaked += sum(h.chunk.owner_id not in (None, MEMBER) for h in hits)
        started = time.perf_counter()
        for store in stores:
            store.similarity_search_by_vector_with_relevance_scores(vector, k=kb.candidates)
        dense.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert kb.lexical is not None
        tables = ["grams"] + (["words"] if kb.latin_lexical_weight > 0 else [])  # as the store queries
        kb.lexical.search(text, kb.scope_collections(GUILD, MEMBER), kb.candidates, tables=tables)
        lexical.append(time.perf_counter() - started)
    stats = kb.stats()
    kb.close()
    return {
        "chunks": stats["community_chunks"] + stats["personal_records"],
        "members_with_records": stats["members_with_records"],
        "queries": len(texts),
        "build_seconds": round(build_seconds, 1) if build_seconds else "cached",
        "scoped_search_by_vector": percentiles(total),
        "scoped_search_by_vector_japanese_queries": percentiles(total[queries:]),
        "dense_only_two_collections": percentiles(dense),
        "lexical_only": percentiles(lexical),
        "other_members_records_returned": leaked,
    }


def embed_query_latency(n: int = 30) -> dict:
    from knowledge.embeddings import load_embeddings

    embeddings = load_embeddings()
    embeddings.embed_query("warm up")
    samples = []
    for i in range(n):
        started = time.perf_counter()
        embeddings.embed_query(f"How often should I change the litter, question {i}?")
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    results = {"machine": machine(), "k": 5, "candidates_per_ranking": 20, "sizes": {}}
    for size in args.sizes:
        results["sizes"][str(size)] = measure(size, args.queries, args.rebuild)
        print(results["sizes"][str(size)], flush=True)
    results["real_embed_query_all_minilm"] = embed_query_latency()
    results["note"] = (
        "scoped_search_by_vector = two Chroma queries (community + asker's records) + FTS5 trigram query (for text "
        "in non-Latin scripts; English queries are dense-only by default) + RRF + fetch of lexical-only hits; "
        "add real_embed_query for a full question. Random vectors make HNSW's job "
        "harder than real embeddings do. Load average is in machine: other jobs shared the 2 cores."
    )
    write("knowledge_retrieval", results)


if __name__ == "__main__":
    main()
