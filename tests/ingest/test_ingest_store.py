"""Ingest into a real knowledge base: re-ingest adds nothing, an edited file replaces its chunks."""

from __future__ import annotations

from pathlib import Path

import chromadb
import pytest

from ingest import IngestLimits, ingest_paths, load_bytes, store_report, text_chunks
from ingest.errors import IngestError
from knowledge.store import KnowledgeBase


@pytest.fixture
def kb(tmp_path: Path, packaged_embeddings: object):
    base = KnowledgeBase(
        chromadb.PersistentClient(str(tmp_path / "chroma")),
        packaged_embeddings,
        lexical_path=tmp_path / "lexical.db",
    )
    yield base
    base.close()


LIMITS = IngestLimits(chunk_size=120)
BRUSH = "Brush long-haired cats such as Persians every single day to prevent mats."
PARAGRAPHS = [
    "Cats should always have fresh, clean water; change the bowl every day.",
    "Adult cats sleep twelve to sixteen hours a day, kittens even more.",
    "Trim claws every two to three weeks and avoid the pink quick.",
]


def test_reingest_adds_nothing_and_edit_replaces(tmp_path: Path, kb: KnowledgeBase, capsys) -> None:
    doc = tmp_path / "guide.md"
    doc.write_text("\n\n".join(PARAGRAPHS), encoding="utf-8")
    first = ingest_paths(kb, [doc], scope="community", guild_id="100", limits=LIMITS, progress=True)
    assert first.stored is not None and (first.stored.added, first.stored.unchanged) == (3, 0)
    assert "embedding" in capsys.readouterr().err  # the tqdm bar

    again = ingest_paths(kb, [doc], scope="community", guild_id="100", limits=LIMITS)
    assert again.stored is not None and (
        again.stored.added,
        again.stored.unchanged,
        again.stored.replaced,
    ) == (0, 3, 0)
    assert kb.stats()["community_chunks"] == 3

    doc.write_text("\n\n".join([PARAGRAPHS[0], PARAGRAPHS[1], BRUSH]), encoding="utf-8")
    edited = ingest_paths(kb, [doc], scope="community", guild_id="100", limits=LIMITS)
    assert edited.stored is not None and (
        edited.stored.added,
        edited.stored.unchanged,
        edited.stored.replaced,
    ) == (1, 2, 1)
    assert kb.stats()["community_chunks"] == 3
    texts = {h.chunk.text for h in kb.search("how often to trim claws", guild_id="100", user_id=None, k=5)}
    assert PARAGRAPHS[2] not in texts and BRUSH in texts
    assert "edited" not in edited.summary() and "1 added, 2 unchanged, 1 old removed" in edited.summary()


def test_same_file_in_personal_scope_is_separate(tmp_path: Path, kb: KnowledgeBase) -> None:
    doc = tmp_path / "notes.txt"
    doc.write_text("Mochi got her booster on 3 May 2024.", encoding="utf-8")
    ingest_paths(kb, [doc], scope="community", guild_id="100")
    mine = ingest_paths(kb, [doc], scope="personal", guild_id="100", owner_id="7")
    assert mine.stored is not None and mine.stored.added == 1
    stats = kb.stats()
    assert (stats["community_chunks"], stats["personal_records"]) == (1, 1)


def test_upload_bytes_with_bad_lines_keeps_the_rest(kb: KnowledgeBase) -> None:
    data = b'{"question": "Q1?", "answer": "A1."}\n{oops\n{"question": "Q3?", "answer": "A3."}\n'
    report = store_report(kb, load_bytes("qa.jsonl", data, scope="personal", guild_id="100", owner_id="7"))
    assert report.stored is not None and report.stored.added == 2
    assert report.problems == [
        "qa.jsonl line 2: not valid JSON (Expecting property name enclosed in double quotes); skipped"
    ]


def test_remember_text(kb: KnowledgeBase) -> None:
    chunks = text_chunks(
        "Mochi hates the vacuum.", source="remember", scope="personal", guild_id="100", owner_id="7"
    )
    assert kb.add(chunks).added == 1
    assert kb.search("vacuum", guild_id="100", user_id="7", k=1)[0].chunk.owner_id == "7"
    with pytest.raises(IngestError, match="empty"):
        text_chunks("  ", source="remember", scope="personal", guild_id="100", owner_id="7")
