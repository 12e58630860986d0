"""knowledge library: embeddings, the scoped Chroma store with lexical fusion, and the answer chain."""

from knowledge.chain import Answer, AnswerService, Source
from knowledge.store import KnowledgeBase
from knowledge.types import AddReport, Chunk, Hit

__all__ = ["AddReport", "Answer", "AnswerService", "Chunk", "Hit", "KnowledgeBase", "Source"]
