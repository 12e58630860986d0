"""Recall@1/@5 of the labelled question set (tests/data/kb_*.jsonl), English and Japanese separately,
hybrid (dense + FTS5 trigram, RRF; ``hybrid_words`` adds the word ranking for Latin questions, the
default since Dec 7) against dense only, with the packaged all-MiniLM-L6-v2.

    python bench/knowledge_recall.py      -> bench/results/knowledge_recall.json
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from _common import machine, write

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def main() -> None:
    import chromadb

    from knowledge.embeddings import load_embeddings
    from knowledge.store import KnowledgeBase
    from knowledge.types import Chunk

    corpus = [
        json.loads(line) for line in (DATA / "kb_corpus.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    questions = [
        json.loads(line) for line in (DATA / "kb_questions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    embeddings = load_embeddings()
    with tempfile.TemporaryDirectory() as tmp:
        client = chromadb.PersistentClient(str(Path(tmp) / "chroma"))
        hybrid = KnowledgeBase(client, embeddings, lexical_path=Path(tmp) / "lexical.db")
        hybrid.add(
            [
                Chunk(id=c["id"], text=c["text"], source="corpus", scope="community", guild_id="1")
                for c in corpus
            ]
        )
        # The default since Dec 7: the word (BM25) ranking counts for Latin questions too
        # (LOOPBOT_KB_WORD_MATCH_WEIGHT, 1.0); "hybrid" is the trigram ranking alone, as before.
        words = KnowledgeBase(
            client, embeddings, lexical_path=Path(tmp) / "lexical.db", latin_lexical_weight=1.0
        )
        dense = KnowledgeBase(client, embeddings)
        vectors = embeddings.embed_documents([q["question"] for q in questions])
        results: dict = {"machine": machine(), "corpus_chunks": len(corpus), "embedder": hybrid.embedder}
        for name, kb in (("hybrid_words", words), ("hybrid", hybrid), ("dense_only", dense)):
            for lang in ("en", "ja"):
                subset = [(q, v) for q, v in zip(questions, vectors, strict=True) if q["lang"] == lang]
                ranks = []
                for q, v in subset:
                    ids = [
                        h.chunk.id
                        for h in kb.search_by_vector(q["question"], v, guild_id="1", user_id=None, k=5)
                    ]
                    ranks.append(ids.index(q["answer"]) + 1 if q["answer"] in ids else None)
                results[f"{name}_{lang}"] = {
                    "questions": len(subset),
                    "recall_at_1": round(sum(r == 1 for r in ranks) / len(ranks), 3),
                    "recall_at_5": round(sum(r is not None for r in ranks) / len(ranks), 3),
                    "missed": [q["question"] for (q, _), r in zip(subset, ranks, strict=True) if r is None],
                }
        hybrid.close()
        words.close()
    results["goal"] = "recall@5 >= 0.9 English, >= 0.8 Japanese"
    write("knowledge_recall", results)


if __name__ == "__main__":
    main()
