"""The fixed regression question set: load it, answer it with a runtime, grade and export the answers.

The set is two packaged files: the 15 questions the product ships (``regression_questions.csv``,
English and Japanese, also the prompts of the quantization checks) and 56 more general questions
that both the fp32 and the 4-bit default model answer (``regression_general.csv``, chosen by
``bench/regression_set.py`` from ``bench/data/regression_candidates.csv``, none an anchor's question).
With 14 gradable questions one flipped answer moved accuracy by 7 %, as much as the noise between
two runs of the same model, so the gate could not tell a lost answer from noise; with 70 it can.

An answer is correct when it contains any of the expected alternatives (pipe-separated,
case-insensitive). A question with no expected answer is ungradable (``correct`` is None) and is
left out of the accuracy: accuracy = correct / gradable.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError
from adapters.prompt import training_messages
from adapters.serving import ACTIVE, BACKGROUND, AdapterChoice, Route

PACKAGED_CSV = "regression_questions.csv"  # the product's fixed set (../shared/data)
GENERAL_CSV = "regression_general.csv"  # general questions the default model answers, fp32 and 4-bit


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
    """Read a ``question,expected_any`` CSV; by default the whole packaged set (the product's fixed
    questions, then the general ones). AdapterError if unreadable."""
    if path is None:
        return [*core_regression_questions(), *_read_questions(None, GENERAL_CSV)]
    return _read_questions(Path(path), str(path))


def core_regression_questions() -> list[RegressionQuestion]:
    """The product's 15 fixed questions alone: the prompts the quantization checks compare on."""
    return _read_questions(None, PACKAGED_CSV)


def _read_questions(path: Path | None, name: str) -> list[RegressionQuestion]:
    """``path``, or the packaged file ``name`` when ``path`` is None."""
    try:
        if path is None:
            text = resources.files("adapters.data").joinpath(name).read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
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
        raise AdapterError(f"{name} needs the header `question,expected_any`.")
    questions = []
    for row in reader:
        question = (row.get("question") or "").strip()
        if question:
            expected = tuple(a.strip() for a in (row.get("expected_any") or "").split("|") if a.strip())
            questions.append(RegressionQuestion(question, expected))
    if not questions:
        raise AdapterError(f"{name} contains no questions.")
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
    adapter: AdapterChoice | str | None = ACTIVE,
    questions: list[RegressionQuestion] | None = None,
    system_prompt: str | None = None,
    max_new_tokens: int = 48,
    route: Route | None = None,
) -> list[RegressionResult]:
    """Answer every question greedily with ``runtime`` (a :class:`~adapters.serving.ModelRuntime`)
    and ``adapter`` (default: the runtime's active one), as ``route`` leaves it for each question
    (:class:`adapters.serving.QuestionRouting`; None: unrouted).

    The choice is fixed once and every question queued at once, so a concurrent adapter switch cannot
    mix adapters within a run.
    """
    questions = load_regression_questions() if questions is None else questions
    choice = AdapterChoice.of(adapter).resolve(getattr(runtime, "active_adapter", None))
    futures = [
        runtime.submit(
            [{"role": "user", "content": q.question}],
            adapter=route(choice, q.question) if route is not None else choice,
            temperature=0.0,
            max_new_tokens=max_new_tokens,
            system_prompt=system_prompt,
            priority=BACKGROUND,
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


def regression_conversations(
    system_prompt: str, questions: list[RegressionQuestion] | None = None
) -> list[list[dict[str, str]]]:
    """The regression questions (the product's 15 by default) as chats: system prompt, then question."""
    questions = core_regression_questions() if questions is None else questions
    return [training_messages(q.question, "", system_prompt) for q in questions]


@dataclass(frozen=True)
class Divergence:
    """How far a model's next-token predictions are from a reference model's, on the reference's answers.

    ``agreement``: share of answer tokens where the model's top token is the reference's greedy token;
    ``kl``: mean KL(reference || model) per answer token, in nats. Both are teacher-forced, so one
    early disagreement does not derail the rest; a broken quantization scores agreement near 0.
    """

    agreement: float
    kl: float
    tokens: int


def divergence_from_reference(
    model: Any,
    reference: Any,
    tokenizer: Any,
    conversations: Sequence[list[dict[str, str]]],
    *,
    max_new_tokens: int = 48,
    score: Callable[[Any, int], Any] | None = None,
) -> Divergence:
    """Compare ``model`` with ``reference`` (both Hugging Face causal LMs, same tokenizer).

    The reference answers each conversation greedily; both models then score prompt + answer.
    ``score(ids, prompt_length)``, when given, replaces ``model``'s scoring: the logits
    ``(answer length, vocabulary)`` that predict the answer tokens (e.g. a prompt forward, then one
    decode step per answer token, as the runtime serves).
    """
    import torch

    agree = tokens = 0
    kl = 0.0
    with torch.inference_mode():
        for messages in conversations:
            prompt = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"].to(reference.device)
            out = reference.generate(
                prompt, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            answer = out[0, prompt.shape[1] :]
            if answer.numel() == 0:
                continue
            span = slice(prompt.shape[1] - 1, out.shape[1] - 1)  # positions that predict the answer
            ref_lp = torch.log_softmax(reference(out).logits[0, span].float(), -1)
            logits = (
                model(out.to(model.device)).logits[0, span]
                if score is None
                else score(out.to(model.device), prompt.shape[1])
            )
            lp = torch.log_softmax(logits.float().to(ref_lp.device), -1)
            agree += int((lp.argmax(-1) == answer).sum())
            kl += float((ref_lp.exp() * (ref_lp - lp)).sum())
            tokens += answer.numel()
    if not tokens:
        raise AdapterError("The reference model produced no answer tokens to compare against.")
    return Divergence(agree / tokens, kl / tokens, tokens)
