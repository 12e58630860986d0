"""Which questions an adapter answers: the ones about a fact it was taught.

A LoRA taught a handful of community facts also changes how the model answers everything else:
through the 70 gradable questions of the regression set (the product's 14 and 56 general ones), every
adapter the loop trained lost 13-29 of the base model's 62 answers, whatever the recipe (bench/recipe_sweep.py). So a version answers only
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
its dataset (the registry reads and writes it: :func:`adapters.registry.write_scope`), and a forget
deletes both.

A route narrows an :class:`~adapters.serving.AdapterChoice` for one question and returns another; the
gate, the regression run and the answer chain take it as a :data:`~adapters.serving.Route`
(:func:`routed`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from adapters.registry import scope_entries, scope_stamp
from adapters.serving._choice import AdapterChoice, Route, unrouted

# Paraphrases of taught questions scored >= 0.5 with MiniLM, the regression set's general questions
# <= 0.44 against the same 40 facts (bench/learning_proof.py's facts; see the README).
DEFAULT_MIN_SIMILARITY = 0.5
# As close as a re-wording of the taught question itself (bench/routing.py: near misses).
DEFAULT_SAME_QUESTION = 0.85
# ``about(question, answer, taught_questions, reworded)``: whether a taught answer, under the questions
# it was taught for, speaks of what ``question`` asks about; ``reworded``: the question is nearly one
# of them (then it only must not name another subject).
About = Callable[[str, str, str, bool], bool]


class _Scope(NamedTuple):
    vectors: np.ndarray  # one unit row per question
    answers: list[str]  # the taught answer of each question ("" unknown)
    asked: list[str]  # of each question, every question taught with the same answer


def _unit(rows: Any) -> np.ndarray:
    matrix = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


class QuestionRouting:
    """Routes each question to the part of a chosen stack whose scope covers it (thread-safe).

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

    def route(self, runtime: Any, choice: AdapterChoice, question: str) -> AdapterChoice:
        """What of ``choice`` (names loaded on ``runtime``) answers ``question``: the stack up to its
        topmost adapter whose scope covers the question (none covers it: the bare base)."""
        names = choice.names
        if not names or self.min_similarity <= 0:
            return choice
        for depth in range(len(names), 0, -1):
            directory = _adapter_path(runtime, names[depth - 1])
            if directory is None or self.covers(directory, question):
                return choice.up_to(depth)
        return choice.up_to(0)

    def _scope(self, directory: Path) -> _Scope | None:
        # Keyed by the file's stamp too: a scope a forget deleted is dropped at the next look.
        stamp = scope_stamp(directory)
        with self._lock:
            kept = self._scopes.get(directory)
            if kept is not None and kept[0] == stamp:
                return kept[1]
        entries = scope_entries(directory) if stamp is not None else None
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


def routed(runtime: Any, routing: QuestionRouting | None) -> Route:
    """``routing.route`` on ``runtime`` as a :data:`~adapters.serving.Route` (``(choice, question) ->
    choice``; without routing every question gets the whole choice), the form the gate, the regression
    run and the answer service take."""
    if routing is None:
        return unrouted
    return lambda choice, question: routing.route(runtime, choice, question)
