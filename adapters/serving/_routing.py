"""Which questions an adapter answers: the ones about a fact it was taught.

A LoRA taught a handful of community facts also changes how the model answers everything else:
through the 70 general questions of the regression set, every adapter the loop trained lost 13-29 of
the base model's 62 answers, whatever the recipe (bench/recipe_sweep.py). So a version answers only
the questions of its *scope*: the questions of its taught pairs (corrections, imported facts) and
their rephrasings, and its parent's when it continued from one; not its 👍 answers (the base gave them
already: a 👍 on "What is the capital of France?" put every capital in scope and cost 8 of 70 general
answers) nor its anchors. A question is in scope when, for one taught question,

* it is nearly that question (cosine >= ``same_question``, 0.85) and names no name or number the
  fact does not ("the 2024 contest" is not "the 2023 contest"), or
* it is close (cosine >= ``min_similarity``) *and* the taught fact speaks of everything it asks about
  (the knowledge base's rule for a quote that answers, applied to the taught answer under its
  questions).

Both text checks are ``about`` (knowledge.quoting.fact_answers, injected). Close alone let a fact
bleed into questions of the same shape about something else: taught the club house's wifi password,
"What is the wifi password of the library?" (0.79) was answered with it; of 45 such near misses, 41
were routed to the adapter at 0.5 (bench/routing.py). The re-wording bar is 0.85, not 0.8: "What is
the church choir called?" is 0.8 from "What is the club choir called?".

Any other question gets what is served beneath it: for a member's adapter, the guild's adapter when
*its* scope covers the question, else the bare base.

A version without a scope file (trained before routing, or its file removed by a forget, after which
it is not served anyway) answers every question, as before; one whose scope holds no answers (trained
before they were kept) is judged on its questions alone. ``min_similarity`` 0 turns routing off.
The scope is the member text a version was trained on: it lives in the version's directory, beside
its dataset, and a forget deletes both.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from adapters.registry import SCOPE_FILE, write_json_atomic
from adapters.runtime import ACTIVE

# What answers: an adapter's served name, or several stacked (a member's over the guild's).
Served = str | tuple[str, ...]
# Paraphrases of taught questions scored >= 0.5 with MiniLM, the regression set's general questions
# <= 0.44 against the same 40 facts (bench/learning_proof.py's facts; see the README).
DEFAULT_MIN_SIMILARITY = 0.5
# As close as a re-wording of the taught question itself (bench/routing.py: near misses).
DEFAULT_SAME_QUESTION = 0.85
# ``about(question, answer, taught_questions, reworded)``: whether a taught answer, under the questions
# it was taught for, speaks of what ``question`` asks about; ``reworded``: the question is nearly one
# of them (then it only must not name another subject).
About = Callable[[str, str, str, bool], bool]


def stack_names(served: Served | None) -> tuple[str, ...]:
    """A served stack as a tuple of names (a one-name tuple is that name; the bare base is ())."""
    return () if served is None else (served,) if isinstance(served, str) else tuple(served)


def chosen(runtime: Any, adapter: Any) -> Served | None:
    """The stack an ``adapter`` argument names: ``ACTIVE`` is the runtime's active adapter now."""
    return getattr(runtime, "active_adapter", None) if adapter is ACTIVE else adapter


def as_served(names: Sequence[str]) -> Served | None:
    """The served form of a stack: None for none, the name for one, else the tuple."""
    return None if not names else names[0] if len(names) == 1 else tuple(names)


def write_scope(
    directory: Path, taught: Iterable[str | tuple[str, str]], parent: Path | None = None
) -> list[str]:
    """Write a version's scope: the ``taught`` questions (each alone or as ``(question, answer)``)
    and, continuing from ``parent``, the parent's; each question once. Returns the questions."""
    entries: dict[str, str] = {}
    inherited = _read(parent) if parent is not None else None
    for question, answer in [*(inherited or ()), *(_entry(item) for item in taught)]:
        if question and question not in entries:
            entries[question] = answer
    write_json_atomic(directory / SCOPE_FILE, {"questions": list(entries), "answers": list(entries.values())})
    return list(entries)


def _entry(item: str | tuple[str, str]) -> tuple[str, str]:
    question, answer = (item, "") if isinstance(item, str) else item
    return question.strip(), answer.strip()


def read_scope(directory: Path) -> list[str] | None:
    """A version's scope questions, or None when it has none (trained before routing: it answers
    everything)."""
    entries = _read(directory)
    return None if entries is None else [question for question, _ in entries]


def _read(directory: Path) -> list[tuple[str, str]] | None:
    try:
        data = json.loads((directory / SCOPE_FILE).read_text(encoding="utf-8"))
        questions = [str(q) for q in data["questions"]]
        answers = [str(a) for a in data.get("answers", ())]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # unreadable: answer everything rather than nothing, as without a scope
    if len(answers) != len(questions):
        answers = [""] * len(questions)  # written before answers were kept
    return list(zip(questions, answers, strict=True))


class _Scope(NamedTuple):
    vectors: np.ndarray  # one unit row per question
    answers: list[str]  # the taught answer of each question ("" unknown)
    asked: list[str]  # of each question, every question taught with the same answer


def _unit(rows: Any) -> np.ndarray:
    matrix = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


class QuestionRouting:
    """Routes each question to the part of a served stack whose scope covers it (thread-safe).

    ``embed_documents`` and ``embed_query`` are the knowledge base's embedder's (any vectors; they
    are normalised here); a scope is embedded once per version directory and kept. ``about``: see
    the module; None judges by closeness alone."""

    def __init__(
        self,
        embed_documents: Callable[[list[str]], Sequence[Sequence[float]]],
        embed_query: Callable[[str], Sequence[float]],
        *,
        min_similarity: float = DEFAULT_MIN_SIMILARITY,
        same_question: float = DEFAULT_SAME_QUESTION,
        about: About | None = None,
    ) -> None:
        self.min_similarity = min_similarity
        self.same_question = max(same_question, min_similarity)
        self.about = about
        self._embed_documents = embed_documents
        self._embed_query = lru_cache(maxsize=1024)(lambda text: _unit(embed_query(text)))
        self._scopes: dict[Path, tuple[int | None, _Scope | None]] = {}
        self._lock = threading.Lock()

    def key(self) -> str:
        """What routing depends on besides the versions, for caches of routed answers."""
        rule = f",same>={self.same_question},about" if self.about is not None else ""
        return f"route>={self.min_similarity}{rule}"

    def covers(self, directory: Path, question: str) -> bool:
        """Whether the version in ``directory`` answers ``question`` (see the module)."""
        scope = self._scope(directory)
        if scope is None:
            return True
        if not scope.answers:
            return False
        similarities = scope.vectors @ self._embed_query(question.strip())
        close = np.flatnonzero(similarities >= self.min_similarity)
        if close.size == 0:
            return False
        if self.about is None:
            return True
        about = self.about
        return any(
            about(question, scope.answers[i], scope.asked[i], bool(similarities[i] >= self.same_question))
            for i in close
        )

    def route(self, runtime: Any, served: Served | None, question: str) -> Served | None:
        """What of ``served`` (names loaded on ``runtime``) answers ``question``: the stack up to its
        topmost adapter whose scope covers the question (None: the bare base)."""
        names = stack_names(served)
        if not names or self.min_similarity <= 0:
            return served
        for depth in range(len(names), 0, -1):
            directory = _adapter_path(runtime, names[depth - 1])
            if directory is None or self.covers(directory, question):
                return as_served(names[:depth])
        return None

    def _scope(self, directory: Path) -> _Scope | None:
        # Keyed by the file's stamp too: a scope a forget deleted is dropped at the next look.
        try:
            stamp: int | None = (directory / SCOPE_FILE).stat().st_mtime_ns
        except OSError:
            stamp = None
        with self._lock:
            kept = self._scopes.get(directory)
            if kept is not None and kept[0] == stamp:
                return kept[1]
        entries = _read(directory) if stamp is not None else None
        scope = None
        if entries is not None:
            questions = [question for question, _ in entries]
            answers = [answer for _, answer in entries]
            same: dict[str, list[str]] = {}
            for question, answer in entries:
                same.setdefault(answer or question, []).append(question)
            vectors = _unit(self._embed_documents(questions)) if questions else np.zeros((0, 1), np.float32)
            scope = _Scope(vectors, answers, [" ".join(same[a or q]) for q, a in entries])
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
