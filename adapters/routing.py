"""Which questions an adapter answers: the ones close to a question it was trained on.

A LoRA taught a handful of community facts also changes how the model answers everything else:
through the 70 general questions of the regression set, every adapter the loop trained lost 13-29 of
the base model's 62 answers, whatever the recipe (bench/recipe_sweep.py). So a version answers only
questions within ``min_similarity`` cosine (under the knowledge base's embedder) of a question it
was taught, its *scope*: its corrections' questions and their rephrasings, and its parent's when it
continued from one; not its 👍 answers (the base gave them already: a 👍 on "What is the capital of
France?" put every capital in scope and cost 8 of 70 general answers) nor its anchors. Any other
question gets what is served beneath it: for a member's adapter, the guild's adapter when *its* scope
covers the question, else the bare base.

A version without a scope file (trained before routing, or its file removed by a forget, after which
it is not served anyway) answers every question, as before. ``min_similarity`` 0 turns routing off.
The scope is the member text a version was trained on: it lives in the version's directory, beside
its dataset, and a forget deletes both.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from adapters.registry import SCOPE_FILE, write_json_atomic
from adapters.runtime import ACTIVE

# What answers: an adapter's served name, or several stacked (a member's over the guild's).
Served = str | tuple[str, ...]
# Paraphrases of taught questions scored >= 0.5 with MiniLM, the regression set's general questions
# <= 0.44 against the same 40 facts (bench/learning_proof.py's facts; see the README).
DEFAULT_MIN_SIMILARITY = 0.5


def stack_names(served: Served | None) -> tuple[str, ...]:
    """A served stack as a tuple of names (a one-name tuple is that name; the bare base is ())."""
    return () if served is None else (served,) if isinstance(served, str) else tuple(served)


def chosen(runtime: Any, adapter: Any) -> Served | None:
    """The stack an ``adapter`` argument names: ``ACTIVE`` is the runtime's active adapter now."""
    return getattr(runtime, "active_adapter", None) if adapter is ACTIVE else adapter


def as_served(names: Sequence[str]) -> Served | None:
    """The served form of a stack: None for none, the name for one, else the tuple."""
    return None if not names else names[0] if len(names) == 1 else tuple(names)


def write_scope(directory: Path, questions: Iterable[str], parent: Path | None = None) -> list[str]:
    """Write a version's scope: ``questions`` and, continuing from ``parent``, the parent's; each once."""
    inherited = read_scope(parent) if parent is not None else None
    kept = list(dict.fromkeys(q.strip() for q in [*(inherited or ()), *questions] if q.strip()))
    write_json_atomic(directory / SCOPE_FILE, {"questions": kept})
    return kept


def read_scope(directory: Path) -> list[str] | None:
    """A version's scope, or None when it has none (trained before routing: it answers everything)."""
    try:
        data = json.loads((directory / SCOPE_FILE).read_text(encoding="utf-8"))
        return [str(q) for q in data["questions"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError):
        return None  # unreadable: answer everything rather than nothing, as without a scope


def _unit(rows: Any) -> np.ndarray:
    matrix = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


class QuestionRouting:
    """Routes each question to the part of a served stack whose scope covers it (thread-safe).

    ``embed_documents`` and ``embed_query`` are the knowledge base's embedder's (any vectors; they
    are normalised here); a scope is embedded once per version directory and kept."""

    def __init__(
        self,
        embed_documents: Callable[[list[str]], Sequence[Sequence[float]]],
        embed_query: Callable[[str], Sequence[float]],
        *,
        min_similarity: float = DEFAULT_MIN_SIMILARITY,
    ) -> None:
        self.min_similarity = min_similarity
        self._embed_documents = embed_documents
        self._embed_query = lru_cache(maxsize=1024)(lambda text: _unit(embed_query(text)))
        self._scopes: dict[Path, tuple[int | None, np.ndarray | None]] = {}
        self._lock = threading.Lock()

    def key(self) -> str:
        """What routing depends on besides the versions, for caches of routed answers."""
        return f"route>={self.min_similarity}"

    def similarity(self, directory: Path, question: str) -> float | None:
        """Cosine of ``question`` with the closest question of the version in ``directory`` (None: it
        has no scope)."""
        scope = self._scope(directory)
        if scope is None:
            return None
        if scope.size == 0:
            return -1.0
        return float((scope @ self._embed_query(question.strip())).max())

    def route(self, runtime: Any, served: Served | None, question: str) -> Served | None:
        """What of ``served`` (names loaded on ``runtime``) answers ``question``: the stack up to its
        topmost adapter whose scope covers the question (None: the bare base)."""
        names = stack_names(served)
        if not names or self.min_similarity <= 0:
            return served
        for depth in range(len(names), 0, -1):
            directory = _adapter_path(runtime, names[depth - 1])
            closest = self.similarity(directory, question) if directory is not None else None
            if closest is None or closest >= self.min_similarity:
                return as_served(names[:depth])
        return None

    def _scope(self, directory: Path) -> np.ndarray | None:
        # Keyed by the file's stamp too: a scope a forget deleted is dropped at the next look.
        try:
            stamp: int | None = (directory / SCOPE_FILE).stat().st_mtime_ns
        except OSError:
            stamp = None
        with self._lock:
            kept = self._scopes.get(directory)
            if kept is not None and kept[0] == stamp:
                return kept[1]
        questions = read_scope(directory) if stamp is not None else None
        scope = None
        if questions is not None:
            scope = _unit(self._embed_documents(questions)) if questions else np.zeros((0, 1), np.float32)
        with self._lock:
            self._scopes[directory] = (stamp, scope)
        return scope


def _adapter_path(runtime: Any, name: str) -> Path | None:
    """Where the adapter loaded as ``name`` came from (None: the runtime cannot say)."""
    path_of = getattr(runtime, "adapter_path", None)
    return path_of(name) if callable(path_of) else None


def routed(runtime: Any, routing: QuestionRouting | None) -> Callable[[Served | None, str], Served | None]:
    """``routing.route`` on ``runtime`` as a ``(served, question) -> served`` function (identity
    without routing), the form the gate and the answer service take."""
    if routing is None:
        return lambda served, question: served
    return lambda served, question: routing.route(runtime, served, question)
