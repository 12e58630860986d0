"""LoRA training on the GPTQ base, in its own process, published through the registry.

:func:`train_adapter` writes the dataset and a config into a registry staging directory, runs
``python -m adapters._train_worker CONFIG.json`` (peft + TRL ``SFTTrainer``), turns the child's
JSON-lines progress into a tqdm bar and callbacks, sends the child's stderr to ``train.log`` in the
run directory, and publishes the run as a new version only after the child exited 0. A killed or
failed child leaves the registry exactly as it was (the run is kept under ``.failed/`` for its log).

Training examples are conversational prompt/completion records, so TRL computes the loss on the
completion only; the prompt is built by :func:`adapters.prompt.training_messages`, the same module the
answer chain renders its prompts with (system prompt, context passages, question).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapters._memory import release_free_memory
from adapters.errors import AdapterError
from adapters.prompt import REPHRASE_SYSTEM_PROMPT, question_messages, rephrase_messages, training_messages
from adapters.registry import (
    DATASET_FILE,
    EVAL_DATASET_FILE,
    PREFERENCE_DATASET_FILE,
    AdapterRegistry,
    AdapterVersion,
)
from adapters.routing import write_scope

ProgressCallback = Callable[[dict[str, Any]], None]
# Pairs that teach a fact: a member's accepted correction, or a pair an owner imported. Always trained
# on (never held out), rephrased, and in the adapter's scope; a 👍 answer ("positive") is none of these.
TAUGHT_KINDS = ("corrected", "taught")
PREFERENCE_METHODS = ("off", "dpo")
# With gradient checkpointing "auto": rows longer than this (prompt + answer tokens) turn it on.
# An anchor (system prompt, a general question, up to 48 answer tokens) is at most ~140 tokens: at 128
# the three longest of the 46 turned checkpointing on for a whole run of 100 short facts (1.55 s a step
# instead of ~1 s). A RAG row with its passages is 200+.
CHECKPOINT_FROM_TOKENS = 160


class NotEnoughPairs(AdapterError):
    """Fewer training pairs than the configured minimum: nothing was trained."""


class TrainingFailed(AdapterError):
    """The training process exited with an error or was killed; the registry is unchanged."""


@dataclass
class TrainingOptions:
    """Hyper-parameters of one run (the CLI fills them from ``settings.train``)."""

    rank: int = 16
    alpha: int = 32
    # The layers LoRA adapts (names present in the model). All seven: served through routing (general
    # questions go to the base), 20 corrections were answered 20/20 (14/20 in other words) against 14/20
    # (3/20) with attention only (bench/learning_proof.py).
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    epochs: float = 5.0  # passes over pairs + anchors, when ``steps`` is 0 and nothing is checked
    steps: int = 0  # optimizer steps; 0: from ``epochs`` and the number of rows
    # A run that teaches facts (corrections, imported pairs) trains until it has learned them: after
    # every pass from ``min_epochs`` on, the worker checks whether the adapter answers each taught
    # question word for word (_train_worker.Learned), and stops when it does, at most ``max_epochs``
    # passes. Five passes left a household's 100 templated records half-learned (loss 0.14, the served
    # adapter named 12 of 100 values) while 20 distinct facts were learned after the second
    # (bench/imported_facts.py). Off, or with ``steps`` set: ``epochs`` passes.
    until_learned: bool = True
    min_epochs: float = 2.0
    max_epochs: float = 12.0
    batch_size: int = 2
    learning_rate: float = 1e-3
    max_length: int = 1024
    seed: int = 0
    threads: int = 0
    # Recompute activations in the backward pass: True, False, or "auto": only when a row is longer
    # than CHECKPOINT_FROM_TOKENS. bench/training_speed.py, batch 2, base dequantized: 220-token RAG
    # rows 3.5 s a step and 2.2 GB with it, 2.6 s and 2.8 GB without; short rows (a fact, ~60 tokens)
    # 1.55 s and 1.9 GB with it, 0.97 s and 2.1 GB without: on short rows it saves nothing.
    gradient_checkpointing: bool | str = "auto"
    # gptqmodel kernel used for training; "torch" learns on the CPU, "auto_trainable" diverges.
    backend: str = "torch"
    # Dequantize the frozen base's int4 layers once, before training (_train_worker.dequantized): the
    # same loss, a step 29-33 % faster (the kernel dequantizes every layer in every forward), +0.4-0.5 GB.
    # The default since the runs train until learned (20 facts: 20/20, 12/20 in other words); it is also
    # deterministic, which the kernel path is not (bench/README.md, "Faster training").
    dequantize: bool = True
    # Without ``dequantize``: torch.compile the kernel's dequantization only for runs of at least this
    # many steps: it saves ~0.6 s per step on short rows, but a first compile costs memory and a C++
    # compiler (_train_worker).
    compile_min_steps: int = 80
    # Score only the answer's positions through the LM head (see _train_worker.score_completions_only);
    # False is for benchmarks measuring what that saves.
    score_completions_only: bool = True
    # Preference training after the SFT steps (adapters/_train_worker._prefer): "dpo" trains each
    # correction over the answer it replaced; "off" does not (the default: bench/learning_proof.py
    # --preference dpo measured what it changes, README "Preference training").
    preference: str = "off"
    preference_epochs: float = 2.0
    preference_beta: float = 0.1
    preference_learning_rate: float = 2e-4

    def __post_init__(self) -> None:
        for name in ("rank", "alpha", "batch_size", "max_length"):
            if int(getattr(self, name)) < 1:
                raise AdapterError(f"Training option {name} must be at least 1 (got {getattr(self, name)}).")
        if self.steps < 0 or (self.steps == 0 and self.epochs <= 0):
            raise AdapterError(
                f"Training needs steps >= 1 or, with steps 0, epochs > 0 (got steps {self.steps}, "
                f"epochs {self.epochs})."
            )
        if not self.target_modules:
            raise AdapterError("Training needs at least one target module (e.g. q_proj,v_proj).")
        if not 0 < self.min_epochs <= self.max_epochs:
            raise AdapterError(
                f"Training needs 0 < min_epochs <= max_epochs (got {self.min_epochs}, {self.max_epochs})."
            )
        if self.gradient_checkpointing not in (True, False, "auto"):
            raise AdapterError(
                f"gradient_checkpointing must be true, false or auto (got {self.gradient_checkpointing!r})."
            )
        if self.preference not in PREFERENCE_METHODS:
            raise AdapterError(
                f"Unknown preference training {self.preference!r}: choose one of {', '.join(PREFERENCE_METHODS)}."
            )
        if self.preference_epochs <= 0 or self.preference_beta <= 0 or self.preference_learning_rate <= 0:
            raise AdapterError("Preference epochs, beta and learning rate must be positive.")
        if self.learning_rate <= 0:
            raise AdapterError(f"The learning rate must be positive (got {self.learning_rate}).")

    def steps_for(self, rows: int, checked: bool = False) -> int:
        """Optimizer steps for ``rows`` training rows: ``steps`` if set, else ``epochs`` passes, or at
        most ``max_epochs`` when the run is ``checked`` until learned (:attr:`until_learned`)."""
        epochs = self.max_epochs if checked and self.until_learned else self.epochs
        return self.steps or max(1, math.ceil(epochs * rows / self.batch_size))

    def checks_learning(self, taught: int) -> bool:
        """Whether a run with ``taught`` taught rows trains until it has learned them."""
        return self.until_learned and not self.steps and taught > 0


@dataclass
class TrainingExample:
    """One Alpaca pair turned into a conversational prompt/completion record."""

    pair_id: str
    prompt: list[dict[str, str]]
    completion: str
    extra: dict[str, Any] = field(default_factory=dict)
    # In the adapter's scope (adapters/routing.py): a taught pair's question or its rephrasing. "" for
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
    from adapters._calibration import INSTRUCTIONS

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
            adapter=None,
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
    from adapters.runtime import BACKGROUND

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
    from adapters.runtime import BACKGROUND

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


def _child_env(shares_cores: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    if not shares_cores:
        # Nothing serves beside the training process: its OpenMP threads may spin between parallel
        # regions (the default) instead of sleeping as loopbot's serving processes make them. 8 steps
        # of the default model, 2 cores: 2.84 s a step instead of 4.15 (bench/training_speed.py).
        # Beside a serving runtime they must not: spinning threads stall its decoding (README).
        env.pop("OMP_WAIT_POLICY", None)
    env.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The child must import this very checkout of loopbot, whatever its working directory.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _run_child(
    config_path: Path,
    log_path: Path,
    total: int,
    on_event: ProgressCallback | None,
    show_progress: bool,
    python: str,
    shares_cores: bool = True,
) -> dict[str, Any]:
    """Run the worker, relay its progress; return its ``done`` event or raise :class:`TrainingFailed`."""
    from tqdm import tqdm

    done: dict[str, Any] | None = None
    # The training process will sit beside this one: give back what this process freed first (the
    # anchors' and earlier answers' activations), so the machine's peak is the two live sets.
    release_free_memory()
    with (
        open(log_path, "ab") as log,
        tqdm(total=total, desc="training", unit="step", disable=not show_progress, file=sys.stderr) as bar,
    ):
        child = subprocess.Popen(
            [python, "-m", "adapters._train_worker", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            env=_child_env(shares_cores),
            text=True,
            bufsize=1,
        )
        try:
            assert child.stdout is not None
            for line in child.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # not a protocol line
                if event.get("event") == "step":
                    bar.update(max(0, int(event["step"]) - bar.n))
                    bar.set_postfix(loss=f"{event.get('loss', 0):.3f}")
                elif event.get("event") == "done":
                    done = event
                if on_event is not None:
                    on_event(event)
            code = child.wait()
        finally:
            # Parent interrupted (Ctrl-C, exception in a callback): never leave the child running.
            if child.poll() is None:
                child.kill()
                child.wait()
    if code != 0 or done is None:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise TrainingFailed(f"The training process {how}; nothing was published. See the log: {log_path}")
    return done


def train_adapter(
    registry: AdapterRegistry,
    *,
    base_model: str,
    examples: Sequence[TrainingExample],
    anchors: Sequence[TrainingExample] = (),
    options: TrainingOptions | None = None,
    parent: AdapterVersion | None = None,
    beneath: AdapterVersion | None = None,
    min_examples: int = 1,
    evaluation: Sequence[TrainingExample] = (),
    preferences: Sequence[PreferenceExample] = (),
    on_event: ProgressCallback | None = None,
    show_progress: bool = True,
    python: str = sys.executable,
    shares_cores: bool = True,
) -> AdapterVersion:
    """Train a LoRA on ``examples`` in a child process and publish it as a new (inactive) version.

    ``anchors`` (see :func:`anchor_examples`) are trained on too but are not feedback pairs: they
    count neither towards ``min_examples`` nor in the version's pair ids. Examples sharing a pair id (a
    pair and its rephrasings, :func:`rephrased_examples`) count as one pair and share its passes.
    ``parent``: continue from that adapter's weights instead of a fresh LoRA. ``beneath``: train over
    that adapter, frozen (a member's over the guild's: served stacked, so trained stacked); only the
    new LoRA is saved, its ``train_config`` names the other. ``on_event`` receives the child's events
    (``start`` carries its ``pid``). ``evaluation``: rows kept out of training whose loss is measured
    after every epoch (``eval`` events, the metrics' ``eval_losses``); the version's
    ``learning_curve.csv`` holds both curves. ``preferences``: with ``options.preference`` "dpo",
    trained after the SFT steps (:func:`adapters._train_worker._prefer`); ignored when it is "off".
    ``shares_cores``: a serving runtime answers members beside the training process (the bot), so its
    threads must not spin. Raises :class:`NotEnoughPairs` below ``min_examples`` and
    :class:`TrainingFailed` if the child fails or is killed.
    """
    options = options or TrainingOptions()
    pair_ids = list(dict.fromkeys(e.pair_id for e in examples))  # a pair's rephrasings share its id
    if len(pair_ids) < max(1, min_examples):
        raise NotEnoughPairs(
            f"Only {len(pair_ids)} training pair(s); at least {max(1, min_examples)} are needed. "
            "Collect more 👍 answers and corrections (or lower LOOPBOT_TRAIN_MIN_PAIRS); nothing was trained."
        )
    if not Path(base_model).exists():
        raise AdapterError(f"Base model {base_model} not found. Run `loopbot model prepare` first.")
    with registry.stage() as stage:
        dataset = stage.path / DATASET_FILE
        rows = [*examples, *anchors]
        dataset.write_text("".join(json.dumps(e.record()) + "\n" for e in rows), encoding="utf-8")
        held_out = stage.path / EVAL_DATASET_FILE
        if evaluation:
            held_out.write_text("".join(json.dumps(e.record()) + "\n" for e in evaluation), encoding="utf-8")
        preferred = list(preferences) if options.preference != "off" else []
        preference_rows = stage.path / PREFERENCE_DATASET_FILE
        if preferred:
            preference_rows.write_text("".join(json.dumps(e.record()) + "\n" for e in preferred), "utf-8")
        # What it will answer (adapters/routing.py): its questions, never its anchors'.
        write_scope(
            stage.path,
            ((e.question, e.completion) for e in examples if e.question),
            parent.path if parent else None,
        )
        # Each taught pair's first row (its own question, not a rephrasing): what "learned" checks.
        firsts = {e.pair_id: i for i, e in reversed(list(enumerate(examples))) if e.question}
        checked = options.checks_learning(len(firsts))
        epoch_steps = max(1, math.ceil((len(pair_ids) + len(anchors)) / options.batch_size))
        config = {
            **asdict(options),
            # A pair's rephrasings share its passes: they add variety, not steps (bench/learning_proof.py).
            "steps": options.steps_for(len(pair_ids) + len(anchors), checked),
            "learned_rows": sorted(firsts.values()) if checked else [],
            "learned_from_step": math.ceil(options.min_epochs * epoch_steps),
            "base": str(base_model),
            "dataset": str(dataset),
            "output_dir": str(stage.path),
            "parent_adapter": str(parent.path) if parent else None,
            "beneath_adapter": str(beneath.path) if beneath else None,
            "eval_dataset": str(held_out) if evaluation else None,
            # An epoch: one pass over the pairs and anchors (a pair's rephrasings share its passes).
            "eval_steps": epoch_steps,
            "preference_dataset": str(preference_rows) if preferred else None,
            "preference_steps": (
                max(1, math.ceil(options.preference_epochs * len(preferred) / options.batch_size))
                if preferred
                else 0
            ),
        }
        config_path = stage.path / "train_config.json"
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        try:
            done = _run_child(
                config_path,
                stage.path / "train.log",
                config["steps"] + config["preference_steps"],
                on_event,
                show_progress,
                python,
                shares_cores,
            )
        except TrainingFailed as error:
            kept = registry.keep_failed(stage)
            raise TrainingFailed(str(error).replace(str(stage.path), str(kept))) from None
        metrics = {k: v for k, v in done.items() if k != "event"}
        # Continuing from a parent keeps its data in the weights: the lineage's pair ids stay listed
        # so `adapters list` can tell which versions still hold forgotten members' data.
        lineage = sorted(set(pair_ids) | set(parent.pair_ids if parent else []))
        return registry.publish(
            stage,
            {
                "base_model": str(base_model),
                "parent": parent.version if parent else None,
                "data_hash": data_hash([*rows, *preferred]),
                "pair_ids": lineage,
                "pair_count": len(pair_ids),
                "anchor_count": len(anchors),
                "metrics": {"train": metrics},
                "train_config": {
                    k: v
                    for k, v in config.items()
                    if k not in ("dataset", "eval_dataset", "preference_dataset", "output_dir")
                },
            },
        )
