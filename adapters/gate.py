"""The promotion gate: a candidate adapter against the active one, on held-out pairs and regressions.

Held-out score: the mean **token F1** between the answer and the expected output (SQuAD-style:
lower-cased, punctuation and the articles a/an/the removed, bag-of-words overlap). F1 was chosen over
"the key content appears in the answer" because feedback outputs are free text with no marked key
span, and F1 rewards a correct short answer without demanding the exact wording. A held-out answer
is flagged correct in the report when its F1 is at least :data:`CORRECT_F1`.

Regression score: accuracy on the fixed regression question set (:mod:`adapters.evaluation`).

Rule: promote when ``candidate_heldout - active_heldout`` is positive and at least ``min_gain``,
AND ``candidate_regression >= active_regression - max_regression_drop``. No held-out pairs means the
candidate cannot show it is better: it is not promoted (promote by hand with
``loopbot adapters promote``). Both adapters answer the same prompts greedily on the same runtime.
"""

from __future__ import annotations

import csv
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError
from adapters.evaluation import RegressionQuestion, accuracy, load_regression_questions, run_regression
from adapters.prompt import split_system

CORRECT_F1 = 0.5  # a held-out answer at or above this token F1 is flagged correct in the report
_EPSILON = 1e-9  # float noise must not flip a tie on the regression set
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def _tokens(text: str) -> list[str]:
    return _ARTICLES.sub(" ", text.casefold().translate(_PUNCT)).split()


def token_f1(answer: str, expected: str) -> float:
    """SQuAD-style token F1 of ``answer`` against ``expected`` (1.0 when both are empty)."""
    got, want = _tokens(answer), _tokens(expected)
    if not got or not want:
        return float(got == want)
    overlap = sum((Counter(got) & Counter(want)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(got), overlap / len(want)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class HeldOutItem:
    """A held-out pair to answer: the chat messages (system first) and the expected output."""

    question: str
    messages: list[dict[str, str]]
    expected: str


@dataclass(frozen=True)
class GateThresholds:
    """``min_gain``: held-out F1 the candidate must gain; ``max_regression_drop``: allowed accuracy loss."""

    min_gain: float = 0.0
    max_regression_drop: float = 0.0


@dataclass
class GateResult:
    """The gate's decision, its scores and where the CSV report is."""

    promote: bool
    reason: str
    candidate: str
    active: str | None
    heldout_active: float
    heldout_candidate: float
    regression_active: float
    regression_candidate: float
    heldout_count: int
    regression_count: int
    report_path: Path | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """The scores as a flat dict (stored in the candidate's metadata)."""
        return {
            "heldout_f1_active": round(self.heldout_active, 4),
            "heldout_f1": round(self.heldout_candidate, 4),
            "regression_accuracy_active": round(self.regression_active, 4),
            "regression_accuracy": round(self.regression_candidate, 4),
            "heldout_pairs": self.heldout_count,
            "regression_questions": self.regression_count,
            "promoted": self.promote,
            "reason": self.reason,
        }


def _answer_all(
    runtime: Any, items: Sequence[HeldOutItem], adapter: str | None, max_new_tokens: int
) -> list[str]:
    """Queue every held-out prompt at once (one adapter per job, so a concurrent swap cannot mix)."""
    futures = []
    for item in items:
        system, turns = split_system(item.messages)
        futures.append(
            runtime.submit(
                turns, system_prompt=system, adapter=adapter, temperature=0.0, max_new_tokens=max_new_tokens
            )
        )
    return [f.result().text for f in futures]


def decide(
    heldout_gain: float, regression_change: float, heldout_count: int, thresholds: GateThresholds
) -> tuple[bool, str]:
    """The rule itself, separate from the generation, so it can be read and tested on its own."""
    if heldout_count == 0:
        return False, (
            "no held-out pairs to compare on (set LOOPBOT_TRAIN_EVAL_FRACTION above 0 or collect more "
            "pairs); promote by hand with `loopbot adapters promote` if you trust it"
        )
    if heldout_gain <= 0 or heldout_gain + _EPSILON < thresholds.min_gain:
        return False, (
            f"held-out F1 gain {heldout_gain:+.3f} is not above the required "
            f"{max(thresholds.min_gain, 0.0):.3f}"
        )
    if regression_change + thresholds.max_regression_drop < -_EPSILON:
        return False, (
            f"regression accuracy changed by {regression_change:+.3f}, more than the allowed "
            f"drop of {thresholds.max_regression_drop:.3f}"
        )
    return True, f"held-out F1 {heldout_gain:+.3f}, regression accuracy {regression_change:+.3f}"


def run_gate(
    runtime: Any,
    *,
    candidate: str,
    active: str | None,
    heldout: Sequence[HeldOutItem],
    thresholds: GateThresholds | None = None,
    regression: Sequence[RegressionQuestion] | None = None,
    report_path: Path | None = None,
    system_prompt: str | None = None,
    max_new_tokens: int = 48,
) -> GateResult:
    """Answer the held-out pairs and the regression set with ``candidate`` and ``active`` (None: the
    bare base), decide, and write the CSV report to ``report_path``.

    Both adapters must already be loaded on ``runtime`` under those names.
    """
    thresholds = thresholds or GateThresholds()
    if candidate not in runtime.adapters:
        raise AdapterError(f"Candidate adapter {candidate!r} is not loaded on the runtime: load it first.")
    questions = list(regression) if regression is not None else load_regression_questions()
    answers = {name: _answer_all(runtime, heldout, name, max_new_tokens) for name in (active, candidate)}
    reg = {
        name: run_regression(
            runtime,
            adapter=name,
            questions=questions,
            system_prompt=system_prompt,
            max_new_tokens=max_new_tokens,
        )
        for name in (active, candidate)
    }
    rows: list[dict[str, Any]] = []
    f1 = {active: [], candidate: []}  # type: dict[str | None, list[float]]
    for index, item in enumerate(heldout):
        row: dict[str, Any] = {"set": "heldout", "question": item.question, "expected": item.expected}
        for role, name in (("active", active), ("candidate", candidate)):
            score = token_f1(answers[name][index], item.expected)
            f1[name].append(score)
            row |= {
                f"{role}_answer": answers[name][index],
                f"{role}_score": round(score, 4),
                f"{role}_correct": score >= CORRECT_F1,
            }
        rows.append(row)
    for a, c in zip(reg[active], reg[candidate], strict=True):
        rows.append(
            {
                "set": "regression",
                "question": a.question,
                "expected": a.expected,
                "active_answer": a.answer,
                "active_score": float(bool(a.correct)),
                "active_correct": a.correct,
                "candidate_answer": c.answer,
                "candidate_score": float(bool(c.correct)),
                "candidate_correct": c.correct,
            }
        )
    mean = {name: (sum(v) / len(v) if v else 0.0) for name, v in f1.items()}
    reg_acc = {name: accuracy(results) for name, results in reg.items()}
    promote, reason = decide(
        mean[candidate] - mean[active], reg_acc[candidate] - reg_acc[active], len(heldout), thresholds
    )
    result = GateResult(
        promote,
        reason,
        candidate,
        active,
        mean[active],
        mean[candidate],
        reg_acc[active],
        reg_acc[candidate],
        len(heldout),
        len(questions),
        report_path,
        rows,
    )
    if report_path is not None:
        write_report(result, report_path)
    return result


REPORT_COLUMNS = [
    "set",
    "question",
    "expected",
    "active_answer",
    "candidate_answer",
    "active_score",
    "candidate_score",
    "active_correct",
    "candidate_correct",
]


def write_report(result: GateResult, path: Path) -> Path:
    """The CSV report: one row per question (held-out, then regression) with both adapters' answers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in result.rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in REPORT_COLUMNS})
    return path
