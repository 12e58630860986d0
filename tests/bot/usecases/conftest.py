"""Fixtures of the use-case tests: a temp-dir knowledge base, a temp feedback log, an answer in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import pytest

from feedback.log import FeedbackLog
from knowledge.store import KnowledgeBase

GUILD, ASKER, STRANGER = "1001", "2001", "2002"


@pytest.fixture
def kb(tmp_path: Path, packaged_embeddings: Any) -> Iterator[KnowledgeBase]:
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    store = KnowledgeBase(client, packaged_embeddings, lexical_path=tmp_path / "lexical.db")
    yield store
    store.close()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[FeedbackLog]:
    feedback_log = FeedbackLog(tmp_path / "loopbot.db")
    yield feedback_log
    feedback_log.close()


@pytest.fixture
def answer_in(log: FeedbackLog) -> Any:
    """``answer_in(guild=GUILD)``: log an answer the asker got ("Once a week.") and return its record."""

    def record(guild: str = GUILD) -> Any:
        answer_id = log.record_answer(
            guild_id=guild,
            channel_id="3001",
            user_id=ASKER,
            question="How often should a kitten eat?",
            context="",
            chunk_ids=(),
            prompt="p",
            prompt_version="rag-v1",
            adapter=None,
            answer="Once a week.",
        )
        return log.get_answer(answer_id)

    return record
