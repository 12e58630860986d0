"""Retrieval quality on the labelled set (tests/data): recall@5 floors for English and Japanese,
and the lexical index's own behaviour (trigram queries, scoping by collection)."""

from __future__ import annotations

import json
from pathlib import Path

import chromadb
import pytest

from knowledge.lexical import LexicalIndex, fts_query, query_terms
from knowledge.retrieval import rrf_fuse
from knowledge.store import KnowledgeBase
from knowledge.types import Chunk

DATA = Path(__file__).parent / "data"
CORPUS = [json.loads(line) for line in (DATA / "kb_corpus.jsonl").read_text(encoding="utf-8").splitlines()]
QUESTIONS = [
    json.loads(line) for line in (DATA / "kb_questions.jsonl").read_text(encoding="utf-8").splitlines()
]


def recall_at(kb: KnowledgeBase, vectors: dict[str, list[float]], lang: str, k: int = 5) -> float:
    questions = [q for q in QUESTIONS if q["lang"] == lang]
    found = 0
    for q in questions:
        hits = kb.search_by_vector(q["question"], vectors[q["question"]], guild_id="1", user_id=None, k=k)
        found += q["answer"] in [h.chunk.id for h in hits]
    return found / len(questions)


def corpus_chunks() -> list[Chunk]:
    return [
        Chunk(id=c["id"], text=c["text"], source="corpus.jsonl", scope="community", guild_id="1")
        for c in CORPUS
    ]


@pytest.fixture(scope="module")
def kbs(tmp_path_factory: pytest.TempPathFactory, packaged_embeddings: object):
    """The labelled corpus in one Chroma store, searched hybrid and dense-only; questions embedded once."""
    root = tmp_path_factory.mktemp("recall")
    client = chromadb.PersistentClient(str(root / "chroma"))
    hybrid = KnowledgeBase(client, packaged_embeddings, lexical_path=root / "lex.db")
    hybrid.add(corpus_chunks())
    dense = KnowledgeBase(client, packaged_embeddings)  # same collection, no lexical index
    vectors = dict(
        zip(
            [q["question"] for q in QUESTIONS],
            packaged_embeddings.embed_documents([q["question"] for q in QUESTIONS]),
            strict=True,
        )
    )
    yield hybrid, dense, vectors
    hybrid.close()


def test_labelled_set_is_consistent() -> None:
    ids = {c["id"] for c in CORPUS}
    assert len(ids) == len(CORPUS) >= 80
    assert all(q["answer"] in ids for q in QUESTIONS)
    assert sum(q["lang"] == "en" for q in QUESTIONS) >= 25 and sum(q["lang"] == "ja" for q in QUESTIONS) >= 15


def test_recall_at_5_english(kbs) -> None:
    hybrid, _, vectors = kbs
    assert recall_at(hybrid, vectors, "en") >= 0.9


def test_recall_at_5_japanese(kbs) -> None:
    hybrid, dense, vectors = kbs
    assert recall_at(hybrid, vectors, "ja") >= 0.9
    assert recall_at(hybrid, vectors, "ja") >= recall_at(dense, vectors, "ja")  # lexical must not hurt


def test_query_terms_split_words_and_trigrams() -> None:
    assert query_terms("How do I trim the claws in 2024?") == {
        "words": ["trim", "claws", "2024"],
        "grams": [],
    }
    assert query_terms("猫の体重") == {"words": [], "grams": ["猫の体", "の体重"]}
    assert query_terms('Mochi "quoted" 体重は') == {"words": ["mochi", "quoted"], "grams": ["体重は"]}
    assert query_terms("?? a an") == {"words": [], "grams": []}
    assert fts_query(["a", 'b"c']) == '"a" OR "b""c"'


def test_lexical_index_is_scoped_by_collection(tmp_path: Path) -> None:
    index = LexicalIndex(tmp_path / "lex.db")
    index.upsert("p-1-1", [("a", "Mochiの体重は4.8キロ")])
    index.upsert("p-1-2", [("b", "Tamaの体重は3.9キロ")])
    assert [row[0] for row in index.search("体重は？", ["p-1-2"], 5)["grams"]] == ["b"]
    assert {row[0] for row in index.search("体重は？", ["p-1-1", "p-1-2"], 5)["grams"]} == {"a", "b"}
    assert [row[0] for row in index.search("Where is Tama?", ["p-1-1", "p-1-2"], 5)["words"]] == ["b"]
    index.upsert("p-1-2", [("b", "Tama is fine")])  # same id: replaced, not duplicated
    assert index.search("体重は？", ["p-1-2"], 5) == {"grams": []} and index.count() == 2
    assert index.delete_collection("p-1-1") == 1 and index.count() == 1
    assert index.search("(", ["p-1-2"], 5) == {}
    index.close()


def test_rrf_fuse_prefers_items_ranked_high_by_both() -> None:
    fused = rrf_fuse([["a", "b", "c"], ["c", "a"]])
    assert [item for item, _ in fused] == ["a", "c", "b"]
    weighted = rrf_fuse([["a"], ["b"]], weights=[1.0, 0.5])
    assert [item for item, _ in weighted] == ["a", "b"]


def test_lexical_index_ignores_terms_most_rows_contain() -> None:
    index = LexicalIndex(":memory:", max_df=0.3, prune_above=5)
    index.upsert("c-1", [(f"r{i}", f"a post about cats number {i}") for i in range(10)])
    index.upsert("c-1", [("rare", "cats and a zebra")])
    assert [row[0] for row in index.search("cats zebra", ["c-1"], 20)["words"]] == ["rare"]
    assert index.search("cats", ["c-1"], 20) == {}  # only common terms: no lexical signal at all
    index.close()


def test_japanese_questions_lean_on_the_trigrams(kbs, tmp_path: Path, packaged_embeddings: object) -> None:
    """The English-centred embedder's guesses count less for a Japanese question: the right chunk
    comes first more often than when both rankings count the same."""
    hybrid, _, vectors = kbs
    client = chromadb.PersistentClient(str(tmp_path / "chroma"))
    equal = KnowledgeBase(
        client, packaged_embeddings, lexical_path=tmp_path / "lex.db", non_latin_dense_weight=1.0
    )
    try:
        equal.add(corpus_chunks())
        assert recall_at(hybrid, vectors, "ja", k=1) > recall_at(equal, vectors, "ja", k=1)
        assert recall_at(hybrid, vectors, "en", k=1) == recall_at(equal, vectors, "en", k=1)
    finally:
        equal.close()
