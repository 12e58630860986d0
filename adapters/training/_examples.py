"""What a LoRA is trained on, each row a conversational prompt/completion record (TRL computes the loss
on the completion only), its prompt built by :func:`adapters.prompt.training_messages`, the same
module the answer chain renders its prompts with (system prompt, context passages, question):

- feedback pairs (:func:`examples_from_pairs`), a taught pair's question in the adapter's scope;
- anchors (:func:`anchor_examples`): the base model's own answers to general questions, replayed so
  teaching community facts does not erode general answers; generated once and kept beside the model and
  in the registry's cache (:func:`cached_anchor_examples`);
- rephrasings (:func:`rephrased_examples`): a taught question in the base model's other words;
- preferences (:func:`preference_examples`): a correction over the answer it replaced.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.errors import AdapterError
from adapters.model import INSTRUCTIONS
from adapters.prompt import REPHRASE_SYSTEM_PROMPT, question_messages, rephrase_messages, training_messages
from adapters.registry import AdapterRegistry, BaseModelCache, model_stamp
from adapters.serving import BACKGROUND, BASE

# Pairs that teach a fact: a member's accepted correction, or a pair an owner imported. Always trained
# on (never held out), rephrased, and in the adapter's scope; a 👍 answer ("positive") is none of these.
TAUGHT_KINDS = ("corrected", "taught")


@dataclass
class TrainingExample:
    """One Alpaca pair turned into a conversational prompt/completion record."""

    pair_id: str
    prompt: list[dict[str, str]]
    completion: str
    extra: dict[str, Any] = field(default_factory=dict)
    # In the adapter's scope (adapters/serving/_routing.py): a taught pair's question or its rephrasing. "" for
    # 👍 answers (the base gave them already) and anchors: the base keeps answering those questions.
    question: str = ""

    def record(self) -> dict[str, Any]:
        """The TRL dataset row: conversational prompt/completion (→ completion-only loss)."""
        return {"prompt": self.prompt, "completion": [{"role": "assistant", "content": self.completion}]}


@dataclass
class PreferenceExample:
    """A correction preferred over the answer it replaced: one DPO row."""

    pair_id: str
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str

    def record(self) -> dict[str, Any]:
        """The TRL preference row: conversational prompt, chosen and rejected completions."""
        return {
            "prompt": self.prompt,
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }


def preference_examples(
    pairs: Sequence[Any], rejected: Mapping[int, str], system_prompt: str
) -> list[PreferenceExample]:
    """A :class:`PreferenceExample` for each pair (``.id .instruction .input .output``) that has a
    ``rejected`` text (by pair id: the answer a correction replaced) other than its own output."""
    return [
        PreferenceExample(
            str(pair.id),
            training_messages(pair.instruction, pair.input or "", system_prompt),
            pair.output,
            rejected[pair.id],
        )
        for pair in pairs
        if rejected.get(pair.id, "").strip() and rejected[pair.id].strip() != pair.output.strip()
    ]


def examples_from_pairs(pairs: Sequence[Any], system_prompt: str) -> list[TrainingExample]:
    """Turn feedback pairs (``.id .instruction .input .output``, ``.kind``) into training examples;
    the question of a pair of a :data:`TAUGHT_KINDS` kind is in the adapter's scope (a pair without a
    kind counts as a correction)."""
    return [
        TrainingExample(
            pair_id=str(pair.id),
            prompt=training_messages(pair.instruction, pair.input or "", system_prompt),
            completion=pair.output,
            question=pair.instruction if getattr(pair, "kind", "corrected") in TAUGHT_KINDS else "",
        )
        for pair in pairs
    ]


def anchor_questions(count: int) -> list[str]:
    """The first ``count`` general questions replayed as anchors (none is a regression question).

    The same questions open the default model's calibration text, so the base answers them in
    distribution."""
    if not 0 <= count <= len(INSTRUCTIONS):
        raise AdapterError(f"Anchors must be between 0 and {len(INSTRUCTIONS)} (got {count}).")
    return list(INSTRUCTIONS[:count])


def _base_model_texts(
    runtime: Any,
    conversations: Sequence[list[dict[str, str]]],
    system_prompt: str,
    max_new_tokens: int,
    **options: Any,
) -> list[str]:
    """The base model's greedy replies (no adapter) to every conversation (no system turn: the runtime
    puts ``system_prompt`` first itself), queued at once; ``options`` go to ``runtime.submit``."""
    futures = [
        runtime.submit(
            turns,
            system_prompt=system_prompt,
            adapter=BASE,
            temperature=0.0,
            max_new_tokens=max_new_tokens,
            **options,
        )
        for turns in conversations
    ]
    return [future.result().text.strip() for future in futures]


def anchor_examples(
    runtime: Any, questions: Sequence[str], system_prompt: str, *, max_new_tokens: int = 48
) -> list[TrainingExample]:
    """The base model's own greedy answers (no adapter) to general ``questions``, as training examples.

    Mixed into a run (replay), they hold the adapter to the base model's behaviour on everything the
    feedback pairs do not cover, so teaching community facts does not erode general answers.
    """
    # Background priority: members' questions go first, and the queue's bound on waiting questions
    # (LOOPBOT_MODEL_MAX_WAITING) is for members, so 40+ anchors queued at once are not refused.
    answers = _base_model_texts(
        runtime,
        [question_messages(q, "") for q in questions],
        system_prompt,
        max_new_tokens,
        priority=BACKGROUND,
    )
    return [
        TrainingExample(f"anchor-{i}", training_messages(q, "", system_prompt), answer)
        for i, (q, answer) in enumerate(zip(questions, answers, strict=True))
        if answer
    ]


def cached_anchor_examples(
    registry: AdapterRegistry,
    runtime: Callable[[], Any],
    questions: Sequence[str],
    *,
    base_model: str,
    system_prompt: str,
) -> list[TrainingExample]:
    """:func:`anchor_examples` for ``questions``, the base model's answers generated once per model and
    prompt, per question, and kept beside the model (:class:`adapters.registry.BaseModelCache`, shared by
    every server, member and data dir) and in ``registry``'s cache: in the running bot, generating them
    takes rows members' questions do not need (background work), so only the first cycle on a machine
    pays for it; ``runtime`` is asked for the model only then."""
    if not questions:
        return []
    key = json.dumps([base_model, model_stamp(base_model), system_prompt])
    cache_key = f"anchor-answers-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    shared = BaseModelCache(base_model)
    answers: dict[str, str] = {}
    for cached in (shared.read(cache_key), registry.read_cache(cache_key)):
        if isinstance(cached, dict):  # the registry's own last: it wins
            answers.update({str(q): str(a) for q, a in cached.items()})
    missing = [q for q in questions if q not in answers]
    if missing:
        made = {
            e.prompt[-1]["content"]: e.completion for e in anchor_examples(runtime(), missing, system_prompt)
        }
        answers.update({q: made.get(q, "") for q in missing})  # "": the base said nothing
        registry.write_cache(cache_key, answers)
        shared.write(cache_key, answers)
    return [
        TrainingExample(f"anchor-{i}", training_messages(q, "", system_prompt), answers[q])
        for i, q in enumerate(questions)
        if answers[q]
    ]


# Names and numbers a rephrasing must keep: a capitalised word after the first, a number, a word
# with a digit ("heron42"). Without them "What is Ada's cat called?" may come back about some cat.
_KEEP = re.compile(r"(?<=\S\s)[A-Z][\w'’-]*|\b\w*\d\w*\b")
_LEADING_LABEL = re.compile(r"^\s*(?:rewritten|rephrased|new|other)?\s*(?:question|version)?\s*:\s*", re.I)


def clean_rephrasing(original: str, text: str) -> str | None:
    """The model's rephrasing of ``original`` as one question, or None when it is not usable.

    Usable: its first line, stripped of a "Rewritten question:" label and quotes, ends in a question
    mark (? or ？), is not the original again (case and punctuation aside), is between half and twice
    (+30 characters) as long, and keeps every name and number of the original."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = _LEADING_LABEL.sub("", line).strip().strip("\"'“”").strip()
    mark = re.search(r"[?？]", line)
    if mark is None:
        return None
    line = line[: mark.end()]

    def bare(value: str) -> str:
        return " ".join(re.findall(r"\w+", value.lower()))

    if bare(line) == bare(original) or not len(original) / 2 <= len(line) <= 2 * len(original) + 30:
        return None
    words = set(re.findall(r"\w+", line.lower()))
    keep = {w.lower().split("'")[0].split("’")[0] for w in _KEEP.findall(original)}
    return line if all(k in words for k in keep) else None


def rephrased_examples(runtime: Any, pairs: Sequence[Any], system_prompt: str) -> list[TrainingExample]:
    """Each pair's question (``.id .instruction .input .output``) in the base model's own other words,
    as an extra row with the same answer: taught a fact asked one way, the adapter then answers it
    asked another way too.

    The rows keep their source pair's id, so forgetting the pair forgets them too. A rephrasing that
    :func:`clean_rephrasing` rejects makes no row. Queued at background priority: members' questions
    go first."""
    texts = _base_model_texts(
        runtime,
        [rephrase_messages(p.instruction) for p in pairs],
        REPHRASE_SYSTEM_PROMPT,
        32,
        priority=BACKGROUND,
    )
    rows = []
    for pair, text in zip(pairs, texts, strict=True):
        other = clean_rephrasing(pair.instruction, text)
        if other is not None:
            rows.append(
                TrainingExample(
                    str(pair.id),
                    training_messages(other, pair.input or "", system_prompt),
                    pair.output,
                    question=other,
                )
            )
    return rows


def data_hash(examples: Sequence[TrainingExample | PreferenceExample]) -> str:
    """A stable hash of the training data: same pairs, same prompts → same hash."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example.record(), sort_keys=True).encode("utf-8"))
    return digest.hexdigest()[:16]
