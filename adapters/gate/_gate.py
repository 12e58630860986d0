"""Running the gate: the candidate, the active adapter and the base answer every set through the same
runtime, as served (routed), their answers are scored by the rule (:mod:`adapters.gate._rule`), and
the per-question CSV report is written where the registry says (``AdapterVersion.gate_report_path``).
Regression answers known from an earlier gate are reused (:mod:`adapters.gate._saved`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError
from adapters.gate._regression import (
    RegressionQuestion,
    RegressionResult,
    accuracy,
    load_regression_questions,
    run_regression,
)
from adapters.gate._rule import (
    PAIR_SETS,
    GateThresholds,
    SetScore,
    brings_back,
    decide,
    holds_answer,
    score_lines,
    token_f1,
)
from adapters.prompt import split_system
from adapters.serving import BACKGROUND, BASE, AdapterChoice, Route, unrouted


@dataclass(frozen=True)
class GateItem:
    """A pair to answer: the chat messages (system first) and the expected output; for a correction,
    the answer it replaced (``rejected``, "" when there is none)."""

    question: str
    messages: list[dict[str, str]]
    expected: str
    rejected: str = ""


@dataclass
class GateResult:
    """The gate's decision, the rule that decided, each set's scores and where the CSV report is."""

    promote: bool
    reason: str
    candidate: AdapterChoice
    active: AdapterChoice
    sets: dict[str, SetScore]
    report_path: Path | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    # Every stack's answers to the regression set, reused and fresh alike
    regression_answers: dict[AdapterChoice, list[RegressionResult]] = field(default_factory=dict)

    def summary(self) -> str:
        """Each non-empty set's scores on one line."""
        return score_lines(self.sets)

    def metrics(self) -> dict[str, Any]:
        """The scores as a flat dict (stored in the candidate's metadata)."""
        out: dict[str, Any] = {"promoted": self.promote, "reason": self.reason}
        for name, score in self.sets.items():
            out |= {
                f"{name}_count": score.count,
                f"{name}_active": round(score.active, 4),
                f"{name}_candidate": round(score.candidate, 4),
            }
            if score.base is not None:
                out[f"{name}_base"] = round(score.base, 4)
        return out


def _answer_all(
    runtime: Any, items: Sequence[GateItem], adapters: Sequence[AdapterChoice], max_new_tokens: int
) -> list[str]:
    """Queue every prompt at once, each with its own adapter (fixed per job, so a concurrent swap
    cannot mix)."""
    futures = []
    for item, adapter in zip(items, adapters, strict=True):
        system, turns = split_system(item.messages)
        futures.append(
            runtime.submit(
                turns,
                system_prompt=system,
                adapter=adapter,
                temperature=0.0,
                max_new_tokens=max_new_tokens,
                priority=BACKGROUND,  # members' questions go first; the gate's answers batch together
            )
        )
    return [f.result().text for f in futures]


def run_gate(
    runtime: Any,
    *,
    candidate: AdapterChoice,
    active: AdapterChoice,
    base: AdapterChoice = BASE,
    pairs: Mapping[str, Sequence[GateItem]],
    thresholds: GateThresholds | None = None,
    regression: Sequence[RegressionQuestion] | None = None,
    report_path: Path | None = None,
    system_prompt: str | None = None,
    max_new_tokens: int = 48,
    known_regression: Mapping[AdapterChoice, Sequence[RegressionResult]] | None = None,
    route: Route | None = None,
) -> GateResult:
    """Answer each pair set (keys of :data:`PAIR_SETS`) and the regression set with ``candidate`` and
    ``active`` (:data:`~adapters.serving.BASE`: the bare base), decide, and write the CSV report (every
    set) to ``report_path``. Either may stack several adapters, as served (a member's over the guild's).
    ``base`` is what is served without any version of the candidate's registry (the bare base; for a
    member's: the guild's adapter); when the active is something else, the regression set is
    answered with it too and the candidate is held to the better of the two.

    ``known_regression`` holds regression answers of stacks from an earlier gate with the same
    questions and prompt: those stacks are not asked again (the candidate always is, for the questions
    routing gives it). Answers for other questions are ignored.

    ``route`` (see :class:`adapters.serving.QuestionRouting`) says what of a stack answers each
    question, as served: every set is scored through it, so a candidate is judged by the answers
    members would get.

    Every adapter named must already be loaded on ``runtime``.
    """
    thresholds = thresholds or GateThresholds()
    route = route or unrouted
    for name in candidate.names:
        if name not in runtime.adapters:
            raise AdapterError(f"Candidate adapter {name!r} is not loaded on the runtime: load it first.")
    unknown = set(pairs) - set(PAIR_SETS)
    if unknown:
        raise ValueError(f"unknown gate set(s) {sorted(unknown)}; expected {PAIR_SETS}")
    questions = list(regression) if regression is not None else load_regression_questions()
    regressed = (active, candidate) if active == base else (active, candidate, base)
    asked = [q.question for q in questions]
    known = {
        a: list(saved)
        for a in regressed
        if a != candidate
        and (saved := (known_regression or {}).get(a)) is not None
        and [r.question for r in saved] == asked
    }
    # What answers each question for each role: with routing, mostly what is beneath the adapters.
    # An answer is one per (stack that answers, question), whichever role asked: a candidate's
    # question routed to the base takes the base's answer, known or asked once.
    served = {a: [route(a, q) for q in asked] for a in regressed}
    answer_of: dict[tuple[AdapterChoice, int], RegressionResult] = {}
    for a, saved in known.items():
        for index, stack in enumerate(served[a]):
            answer_of[(stack, index)] = saved[index]
    to_ask: dict[AdapterChoice, list[int]] = {}  # stack -> the questions it must answer
    for a in regressed:
        for index, stack in enumerate(served[a]):
            if (stack, index) not in answer_of and index not in to_ask.get(stack, ()):
                to_ask.setdefault(stack, []).append(index)
    pair_items = {name: list(pairs.get(name, ())) for name in PAIR_SETS}
    pair_served = {
        (name, a): [route(a, item.question) for item in pair_items[name]]
        for name in PAIR_SETS
        for a in (active, candidate)
    }
    rows: list[dict[str, Any]] = []
    sets: dict[str, SetScore] = {}
    back: dict[AdapterChoice, list[bool]] = {active: [], candidate: []}  # per answer with a rejected text
    # Every answer is queued at once (each set and the regression run, for both adapters), so the
    # runtime batches them all, as background work behind members' questions.
    with ThreadPoolExecutor(max_workers=2 * len(PAIR_SETS) + max(1, len(to_ask))) as pool:
        pending = {
            key: pool.submit(_answer_all, runtime, pair_items[key[0]], stacks, max_new_tokens)
            for key, stacks in pair_served.items()
        }
        pending_regression = {
            stack: pool.submit(
                run_regression,
                runtime,
                adapter=stack,
                questions=[questions[i] for i in indices],
                system_prompt=system_prompt,
                max_new_tokens=max_new_tokens,
            )
            for stack, indices in to_ask.items()
        }
        answered = {key: future.result() for key, future in pending.items()}
        for stack, future in pending_regression.items():
            for index, fresh in zip(to_ask[stack], future.result(), strict=True):
                answer_of[(stack, index)] = fresh
    reg = {a: [answer_of[(stack, i)] for i, stack in enumerate(served[a])] for a in regressed}
    for name in PAIR_SETS:
        items = pair_items[name]
        answers = {a: answered[(name, a)] for a in (active, candidate)}
        scores: dict[AdapterChoice, list[float]] = {active: [], candidate: []}
        for index, item in enumerate(items):
            row: dict[str, Any] = {"set": name, "question": item.question, "expected": item.expected}
            for role, adapter in (("active", active), ("candidate", candidate)):
                f1 = token_f1(answers[adapter][index], item.expected)
                correct = holds_answer(answers[adapter][index], item.expected, item.question)
                # Held-out pairs score their F1 (style); the others whether they were answered.
                scores[adapter].append(f1 if name == "heldout" else float(correct))
                row |= {
                    f"{role}_answer": answers[adapter][index],
                    f"{role}_score": round(f1, 4),
                    f"{role}_correct": correct,
                    f"{role}_served": pair_served[(name, adapter)][index].label(),
                }
                if item.rejected:
                    came_back = brings_back(
                        answers[adapter][index], item.expected, item.rejected, item.question
                    )
                    back[adapter].append(came_back)
                    row |= {"rejected": item.rejected, f"{role}_rejected_back": came_back}
            rows.append(row)
        mean = {a: (sum(v) / len(v) if v else 0.0) for a, v in scores.items()}
        sets[name] = SetScore(len(items), mean[active], mean[candidate])
    if back[candidate]:
        count = len(back[candidate])
        sets["rejected"] = SetScore(count, sum(back[active]) / count, sum(back[candidate]) / count)
    for index in range(len(questions)):
        first = reg[active][index]
        row = {"set": "regression", "question": first.question, "expected": first.expected}
        for role, adapter in zip(("active", "candidate", "base"), regressed, strict=False):
            answer = reg[adapter][index]
            row |= {
                f"{role}_answer": answer.answer,
                f"{role}_score": float(bool(answer.correct)),
                f"{role}_correct": answer.correct,
            }
            if role != "base":
                row[f"{role}_served"] = served[adapter][index].label()
        rows.append(row)
    sets["regression"] = SetScore(
        len(questions),
        accuracy(reg[active]),
        accuracy(reg[candidate]),
        base=None if active == base else accuracy(reg[base]),
    )
    promote, reason = decide(sets, thresholds)
    result = GateResult(
        promote, reason, candidate, active, sets, report_path, rows, {a: reg[a] for a in regressed}
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
    "base_answer",  # regression rows, when the active is not the base
    "base_correct",
    "active_served",  # what answered the question: the stack, or what routing left of it
    "candidate_served",
    "rejected",  # a correction's pair: the answer it replaced, and whether each adapter gave it again
    "active_rejected_back",
    "candidate_rejected_back",
]


def write_report(result: GateResult, path: Path) -> Path:
    """The CSV report: one row per question of every set with both adapters' answers and scores."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in result.rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in REPORT_COLUMNS})
    return path
