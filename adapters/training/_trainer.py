"""LoRA training on the GPTQ base, in its own process, published through the registry.

:func:`train_adapter` writes the dataset and a config into a registry staging directory, runs
``python -m adapters.training._worker CONFIG.json`` (peft + TRL ``SFTTrainer``), turns the child's
JSON-lines progress into a tqdm bar and callbacks, sends the child's stderr to ``train.log`` in the
run directory, and publishes the run as a new version only after the child exited 0. A killed or
failed child leaves the registry exactly as it was (the run is kept under ``.failed/`` for its log).

What it trains on (pairs, anchors, rephrasings, preferences) is built in
:mod:`adapters.training._examples`; what the process does, in :mod:`adapters.training._worker`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapters._memory import release_free_memory
from adapters.errors import AdapterError
from adapters.registry import AdapterRegistry, AdapterVersion
from adapters.training._examples import PreferenceExample, TrainingExample, data_hash

ProgressCallback = Callable[[dict[str, Any]], None]
WORKER_MODULE = "adapters.training._worker"  # run as ``python -m``: the training process's entry
PREFERENCE_METHODS = ("off", "dpo")
# Where in its stage the training process reads and writes: not part of the version's train_config.
_STAGE_PATHS = (
    "dataset",
    "eval_dataset",
    "preference_dataset",
    "output_dir",
    "result_file",
    "learning_curve",
)


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
    # question word for word (adapters.training._worker's Learned), and stops when it does, at most ``max_epochs``
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
    # Dequantize the frozen base's int4 layers once, before training (adapters.training._peft.dequantized): the
    # same loss, a step 29-33 % faster (the kernel dequantizes every layer in every forward), +0.4-0.5 GB.
    # The default since the runs train until learned (20 facts: 20/20, 9-12/20 in other words); it is also
    # deterministic, which the kernel path is not (bench/README.md, "Faster training").
    dequantize: bool = True
    # Without ``dequantize``: torch.compile the kernel's dequantization only for runs of at least this
    # many steps: it saves ~0.6 s per step on short rows, but a first compile costs memory and a C++
    # compiler (adapters.training._worker).
    compile_min_steps: int = 80
    # Score only the answer's positions through the LM head (see _peft.score_completions_only);
    # False is for benchmarks measuring what that saves.
    score_completions_only: bool = True
    # Preference training after the SFT steps (adapters/training/_worker._prefer): "dpo" trains each
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
    root = str(Path(__file__).resolve().parents[2])
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
            [python, "-m", WORKER_MODULE, str(config_path)],
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

    ``anchors`` (see :func:`~adapters.training.anchor_examples`) are trained on too but are not feedback pairs: they
    count neither towards ``min_examples`` nor in the version's pair ids. Examples sharing a pair id (a
    pair and its rephrasings, :func:`~adapters.training.rephrased_examples`) count as one pair and share its passes.
    ``parent``: continue from that adapter's weights instead of a fresh LoRA. ``beneath``: train over
    that adapter, frozen (a member's over the guild's: served stacked, so trained stacked); only the
    new LoRA is saved, its ``train_config`` names the other. ``on_event`` receives the child's events
    (``start`` carries its ``pid``). ``evaluation``: rows kept out of training whose loss is measured
    after every epoch (``eval`` events, the metrics' ``eval_losses``); the version's
    ``learning_curve.csv`` holds both curves. ``preferences``: with ``options.preference`` "dpo",
    trained after the SFT steps (:func:`adapters.training._worker._prefer`); ignored when it is "off".
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
        rows = [*examples, *anchors]
        dataset = stage.write_dataset(e.record() for e in rows)
        held_out = stage.write_eval_dataset(e.record() for e in evaluation) if evaluation else None
        preferred = list(preferences) if options.preference != "off" else []
        preference_rows = stage.write_preference_dataset(e.record() for e in preferred) if preferred else None
        # What it will answer (adapters/serving/_routing.py): its questions, never its anchors'.
        stage.write_scope(((e.question, e.completion) for e in examples if e.question), parent)
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
            "result_file": str(stage.result_path),
            "learning_curve": str(stage.learning_curve_path),
            "parent_adapter": str(parent.path) if parent else None,
            "beneath_adapter": str(beneath.path) if beneath else None,
            "eval_dataset": str(held_out) if held_out else None,
            # An epoch: one pass over the pairs and anchors (a pair's rephrasings share its passes).
            "eval_steps": epoch_steps,
            "preference_dataset": str(preference_rows) if preference_rows else None,
            "preference_steps": (
                max(1, math.ceil(options.preference_epochs * len(preferred) / options.batch_size))
                if preferred
                else 0
            ),
        }
        config_path = stage.write_config(config)
        try:
            done = _run_child(
                config_path,
                stage.log_path,
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
                "train_config": {k: v for k, v in config.items() if k not in _STAGE_PATHS},
            },
        )
