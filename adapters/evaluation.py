"""The fixed regression question set: load it, answer it with a runtime, grade and export the answers.

An answer is correct when it contains any of the expected alternatives (pipe-separated,
case-insensitive). A question with no expected answer is ungradable (``correct`` is None) and is
left out of the accuracy: accuracy = correct / gradable.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError
from adapters.runtime import ACTIVE

PACKAGED_CSV = "regression_questions.csv"


@dataclass(frozen=True)
class RegressionQuestion:
    """A question and its accepted answers (empty: ungradable)."""

    question: str
    expected_any: tuple[str, ...]


@dataclass(frozen=True)
class RegressionResult:
    """One answered question: ``correct`` is None when the question is ungradable."""

    question: str
    expected: str
    answer: str
    correct: bool | None
    adapter: str | None = None


def load_regression_questions(path: Path | None = None) -> list[RegressionQuestion]:
    """Read a ``question,expected_any`` CSV (the packaged set by default); AdapterError if unreadable."""
    try:
        if path is None:
            text = resources.files("adapters.data").joinpath(PACKAGED_CSV).read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise AdapterError(
            f"Cannot read the regression questions ({error}): check the --questions path."
        ) from None
    reader = csv.DictReader(text.splitlines())
    if (
        not reader.fieldnames
        or "question" not in reader.fieldnames
        or "expected_any" not in reader.fieldnames
    ):
        raise AdapterError(f"{path or PACKAGED_CSV} needs the header `question,expected_any`.")
    questions = []
    for row in reader:
        question = (row.get("question") or "").strip()
        if question:
            expected = tuple(a.strip() for a in (row.get("expected_any") or "").split("|") if a.strip())
            questions.append(RegressionQuestion(question, expected))
    if not questions:
        raise AdapterError(f"{path or PACKAGED_CSV} contains no questions.")
    return questions


def is_correct(answer: str, expected_any: str | Sequence[str]) -> bool | None:
    """True if ``answer`` contains any expected alternative (case-insensitive); None if none is given."""
    alternatives = expected_any.split("|") if isinstance(expected_any, str) else list(expected_any)
    alternatives = [a.strip().casefold() for a in alternatives if a.strip()]
    if not alternatives:
        return None
    folded = answer.casefold()
    return any(a in folded for a in alternatives)


def run_regression(
    runtime: Any,
    *,
    adapter: Any = ACTIVE,
    questions: list[RegressionQuestion] | None = None,
    system_prompt: str | None = None,
    max_new_tokens: int = 48,
) -> list[RegressionResult]:
    """Answer every question greedily with ``runtime`` (a :class:`~adapters.runtime.ModelRuntime`).

    All questions are queued at once, so a concurrent adapter switch cannot mix adapters within a run.
    """
    questions = load_regression_questions() if questions is None else questions
    futures = [
        runtime.submit(
            [{"role": "user", "content": q.question}],
            adapter=adapter,
            temperature=0.0,
            max_new_tokens=max_new_tokens,
            system_prompt=system_prompt,
        )
        for q in questions
    ]
    results = []
    for q, future in zip(questions, futures, strict=True):
        generation = future.result()
        results.append(
            RegressionResult(
                q.question,
                "|".join(q.expected_any),
                generation.text,
                is_correct(generation.text, q.expected_any),
                generation.adapter,
            )
        )
    return results


def accuracy(results: Sequence[RegressionResult]) -> float:
    """Correct / gradable (0.0 when nothing is gradable)."""
    graded = [r.correct for r in results if r.correct is not None]
    return sum(graded) / len(graded) if graded else 0.0


def write_regression_csv(results: Sequence[RegressionResult], path: Path) -> Path:
    """Write ``question,expected,answer,correct`` rows (correct: true/false/empty) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "expected", "answer", "correct"])
        for r in results:
            writer.writerow(
                [r.question, r.expected, r.answer, "" if r.correct is None else str(r.correct).lower()]
            )
    return path
