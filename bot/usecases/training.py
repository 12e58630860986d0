"""The training use case: one retraining cycle, pairs -> train -> gate -> promote -> hot swap.

The CLI (``loopbot train``), the bot (``/train``, the schedule) and the demo call
:func:`run_training_cycle` with their own parts: the feedback log and registry they already hold, and
the runtime that serves (or a loader for a temporary one). Which pairs a run uses is
:mod:`bot.usecases.pairs`; training, :mod:`adapters.training`; the gate, :mod:`adapters.gate`;
promoting and serving a version, :mod:`bot.usecases.serving`. This module decides, from the settings,
what to feed them and in which order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.usecases.pairs import (
    anchor_count,
    held_out_taught,
    kept_guild_pairs,
    needs_training,
    rejected_answers,
    split_for_gate,
)

if TYPE_CHECKING:
    from adapters.gate import GateItem, GateResult
    from adapters.registry import AdapterRegistry, AdapterVersion
    from adapters.serving import QuestionRouting, Runtime
    from adapters.training import TrainingOptions
    from bot.settings import Settings
    from feedback.log import FeedbackLog
    from feedback.records import Pair


@dataclass
class CycleReport:
    """What a cycle did: trained (which version), the gate's decision, promotion and swap."""

    trained: bool
    reason: str
    version: str | None = None
    promoted: bool = False
    swapped: bool = False
    previous: str | None = None
    train_pairs: int = 0
    heldout_pairs: int = 0
    rephrased_rows: int = 0  # corrections also trained on in the base model's own words
    guild_rows: int = 0  # a member's cycle: the guild's pairs trained beside theirs (kept_guild_pairs)
    gate: GateResult | None = None
    train_metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    gate_seconds: float = 0.0  # the gate's own share of ``seconds`` (both adapters' answers, scoring)

    def summary(self) -> str:
        """One human line for the CLI and the bot."""
        if not self.trained:
            return f"nothing trained: {self.reason}"
        gate = f"; gate: {self.gate.reason}" if self.gate else ""
        state = "promoted" if self.promoted else "not promoted"
        swap = " and now served" if self.swapped else ""
        return (
            f"trained {self.version} on {self.train_pairs} pairs in {self.seconds:.0f} s: {state}{swap}{gate}"
        )


@dataclass
class TrainingParts:
    """What a cycle works on: the caller's own log and registry, the base model's path (looked up
    only once there is something to train: a missing model must not hide "not enough pairs"), and
    the serving runtime (the bot's, hot-swapped on promotion) or a loader for a temporary one."""

    feedback_log: FeedbackLog
    registry: AdapterRegistry
    base_model: Callable[[], str]
    runtime: Runtime | None = None
    load_runtime: Callable[[], Runtime] | None = None
    # The guild whose shared pairs train this registry (None: every guild's, a one-guild setup).
    guild_id: str | None = None
    # A member's own adapter instead: trained on that member's personal pairs only (every guild's and
    # their DMs'), and served only to them.
    member_id: str | None = None
    # For a member's adapter: the adapter it is served stacked over (the guild's active version, None
    # if the guild has none), looked up when the cycle starts; it is trained over it, frozen, and the
    # gate compares the stacks (bench/member_adapter.py).
    beneath: Callable[[], AdapterVersion | None] | None = None
    # How the serving runtime starts answering with a promoted version (the bot: for this guild
    # only). None with a runtime: it becomes the runtime's default adapter.
    serve: Callable[[AdapterVersion | None], Any] | None = None
    # Which questions each adapter answers as served (adapters.serving.QuestionRouting); the gate
    # judges through it. None: every adapter answers every question.
    routing: QuestionRouting | None = None


def training_options(settings: Settings) -> TrainingOptions:
    """``TrainingOptions`` from ``settings.train`` (+ the model's thread count)."""
    from adapters.training import TrainingOptions

    return TrainingOptions(
        rank=settings.train.rank,
        alpha=settings.train.alpha,
        target_modules=tuple(m.strip() for m in settings.train.target_modules.split(",") if m.strip()),
        epochs=settings.train.epochs,
        steps=settings.train.steps,
        until_learned=settings.train.until_learned,
        min_epochs=settings.train.min_epochs,
        max_epochs=settings.train.max_epochs,
        batch_size=settings.train.batch_size,
        learning_rate=settings.train.learning_rate,
        gradient_checkpointing=settings.train.gradient_checkpointing,
        dequantize=settings.train.dequantize,
        threads=settings.model.threads,
        preference=settings.train.preference,
        preference_epochs=settings.train.preference_epochs,
    )


def run_training_cycle(
    settings: Settings,
    parts: TrainingParts,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    if_needed: bool = False,
    from_active: bool | None = None,
    show_progress: bool = False,
    promote: bool = True,
    eval_fraction: float = 0.0,
) -> CycleReport:
    """Train a candidate on the guild's shared pairs (or, with ``parts.member_id``, on that member's
    personal pairs), gate it against the active adapter, promote it if it passes and, when
    ``parts.runtime`` is given (the running bot's), hot-swap it in.

    Without it a temporary runtime is loaded with ``parts.load_runtime`` when the anchors or the
    rephrasings need the base model, closed while training runs, and loaded again for the gate.
    Personal pairs never train a shared adapter and forgotten members' pairs are never used
    (``FeedbackLog.pairs`` leaves both out). ``from_active`` (default: the settings'
    ``continue_from_active``) continues the active adapter's weights, unless it still holds forgotten
    pairs. ``progress`` receives the training process's events. ``eval_fraction`` keeps that share
    of the taught (imported) pairs out of this run: their loss is measured after every epoch and the
    gate reports how many the candidate answers as served, without deciding on them.
    """
    from adapters.serving import served_name, swap_to
    from adapters.training import NotEnoughPairs
    from bot.usecases.privacy import learning_refusal

    started = time.perf_counter()
    refusal = learning_refusal(parts.feedback_log, parts.guild_id, parts.member_id)
    if refusal:  # a server's switch or a member's consent: no run at all
        return CycleReport(trained=False, reason=refusal)
    registry = parts.registry
    if parts.member_id is not None:
        pairs = parts.feedback_log.pairs(owner_id=parts.member_id)
    else:
        pairs = parts.feedback_log.pairs(guild_id=parts.guild_id)
    beneath = parts.beneath() if parts.member_id is not None and parts.beneath is not None else None
    if if_needed:
        needed, why = needs_training(settings, pairs, registry, beneath=beneath)
        if not needed:
            return CycleReport(trained=False, reason=why)
    active = registry.active()
    train_pairs, gate_sets = split_for_gate(pairs, active, settings.train.eval_fraction)
    if eval_fraction > 0:
        gate_sets["eval"] = held_out_taught(train_pairs, eval_fraction)
        kept_out = {p.id for p in gate_sets["eval"]}
        train_pairs = [p for p in train_pairs if p.id not in kept_out]
        for name in ("taught", "retained"):
            gate_sets[name] = [p for p in gate_sets[name] if p.id not in kept_out]
    if len(train_pairs) < settings.train.min_pairs:
        raise NotEnoughPairs(
            f"Only {len(train_pairs)} training pair(s) ({len(pairs)} in the feedback log, "
            f"{len(gate_sets['heldout'])} held out for the gate); {settings.train.min_pairs} are needed "
            "(LOOPBOT_TRAIN_MIN_PAIRS). Collect more 👍 answers and corrections; nothing was trained."
        )
    base_model = parts.base_model()
    if from_active is None:
        from_active = settings.train.continue_from_active
    forgotten = parts.feedback_log.forgotten_pair_ids()
    parent = active if from_active and active is not None and not active.forgotten_pairs(forgotten) else None
    runtimes = _Runtimes(parts)
    try:
        rejected = rejected_answers(parts.feedback_log, train_pairs)
        report, version = _train(
            settings, parts, runtimes, base_model, train_pairs, gate_sets, rejected, parent, beneath,
            progress=progress, show_progress=show_progress,
        )  # fmt: skip
        runtime = runtimes.get()
        report.gate, report.gate_seconds = _gate(
            settings, parts, runtime, base_model, version, active, beneath, gate_sets, rejected, progress
        )
        registry.update_metadata(
            version.version,
            metrics={**version.metrics, "gate": report.gate.metrics()},
            gate_report=str(report.gate.report_path),
            # The eval pairs too: kept out of this run, trained by the next one without --eval-fraction,
            # and a forget of their author scrubs this version's copy of them (eval.jsonl).
            heldout_pair_ids=[str(p.id) for p in [*gate_sets["heldout"], *gate_sets.get("eval", [])]],
        )
        if report.gate.promote and promote:
            report.previous = active.version if active else None
            registry.promote(version.version)
            report.promoted = True
            if runtimes.serving:
                serve = parts.serve or (lambda promoted: swap_to(runtime, promoted))
                serve(registry.get(version.version))
                report.swapped = True
        elif runtimes.serving and served_name(version) in runtime.adapters:
            runtime.unload_adapter(served_name(version))  # a rejected candidate is not kept in memory
    finally:
        runtimes.close()
    report.seconds = time.perf_counter() - started
    return report


class _Runtimes:
    """The runtime a cycle answers with: the serving one (``parts.runtime``, the bot's, which answers
    members meanwhile), or the cycle's own, loaded when first needed, closed while the training process
    runs and when the cycle ends."""

    def __init__(self, parts: TrainingParts) -> None:
        if parts.runtime is None and parts.load_runtime is None:
            raise TypeError("TrainingParts needs a runtime or load_runtime")
        self._parts = parts
        self._own: list[Runtime] = []

    @property
    def serving(self) -> bool:
        """Whether the cycle answers with the serving runtime (not one of its own)."""
        return self._parts.runtime is not None

    def get(self) -> Runtime:
        """The runtime, the cycle's own loaded now if it has none."""
        if self._parts.runtime is not None:
            return self._parts.runtime
        if not self._own:
            self._own.append(self._parts.load_runtime())  # type: ignore[misc]  # checked in __init__
        return self._own[0]

    def close(self) -> None:
        """Close and drop the cycle's own runtime, so its model's memory can go back to the OS (the
        training process's start trims the heap) before anything else is loaded."""
        import gc

        while self._own:
            self._own.pop().close()
        gc.collect()  # a model kept alive by a reference cycle would otherwise wait for a collection


def _train(
    settings: Settings,
    parts: TrainingParts,
    runtimes: _Runtimes,
    base_model: str,
    train_pairs: list[Pair],
    gate_sets: dict[str, list[Pair]],
    rejected: Mapping[int, str],
    parent: AdapterVersion | None,
    beneath: AdapterVersion | None,
    *,
    progress: Callable[[dict[str, Any]], None] | None,
    show_progress: bool,
) -> tuple[CycleReport, AdapterVersion]:
    """Build the run's rows (pairs, the guild's kept pairs, anchors, rephrasings, preferences), train
    the candidate in its own process and publish it."""
    from adapters.training import (
        TAUGHT_KINDS,
        anchor_questions,
        cached_anchor_examples,
        examples_from_pairs,
        preference_examples,
        rephrased_examples,
        train_adapter,
    )

    registry, system_prompt = parts.registry, settings.model.system_prompt
    kept = kept_guild_pairs(parts.feedback_log.pairs(), beneath, len(train_pairs)) if beneath else []
    count = anchor_count(settings, len(train_pairs) + len(kept))
    anchors = cached_anchor_examples(
        registry, runtimes.get, anchor_questions(count), base_model=base_model, system_prompt=system_prompt
    )
    examples = examples_from_pairs([*train_pairs, *kept], system_prompt)
    rephrased = []
    taught = [p for p in train_pairs if p.kind in TAUGHT_KINDS]
    if settings.train.rephrase_corrections and taught:
        rephrased = rephrased_examples(runtimes.get(), taught, system_prompt)
    # A temporary runtime serves nobody while the training process runs: its model goes, so the
    # two processes do not hold two models at once (bench/first_run.py), and is loaded again for
    # the gate (a few seconds). A bot's runtime stays: it answers members meanwhile.
    runtimes.close()
    with registry.training_lock():
        registry.clean_staging()  # leftovers of killed runs; no other run is live while we hold it
        version = train_adapter(
            registry,
            base_model=base_model,
            examples=[*examples, *rephrased],
            anchors=anchors,
            options=training_options(settings),
            parent=parent,
            beneath=beneath,
            min_examples=settings.train.min_pairs,
            evaluation=examples_from_pairs(gate_sets.get("eval", []), system_prompt),
            preferences=preference_examples(train_pairs, rejected, system_prompt),
            on_event=progress,
            show_progress=show_progress,
            shares_cores=runtimes.serving,  # the bot's runtime answers members meanwhile
        )
    report = CycleReport(
        trained=True,
        reason="trained",
        version=version.version,
        train_pairs=len(train_pairs),
        heldout_pairs=len(gate_sets["heldout"]),
        rephrased_rows=len(rephrased),
        guild_rows=len(kept),
        train_metrics=dict(version.metrics.get("train", {})),
    )
    return report, version


def _gate(
    settings: Settings,
    parts: TrainingParts,
    runtime: Runtime,
    base_model: str,
    version: AdapterVersion,
    active: AdapterVersion | None,
    beneath: AdapterVersion | None,
    gate_sets: dict[str, list[Pair]],
    rejected: Mapping[int, str],
    progress: Callable[[dict[str, Any]], None] | None,
) -> tuple[GateResult, float]:
    """The candidate against the active version, each as served (a member's stacked over the guild's
    adapter), with the regression answers earlier gates kept; returns the result and its seconds."""
    from adapters.gate import (
        GateThresholds,
        known_regression,
        load_regression_questions,
        regression_key,
        run_gate,
        save_regression,
    )
    from adapters.serving import AdapterChoice, ensure_loaded, routed, served_name

    registry, system_prompt = parts.registry, settings.model.system_prompt
    for loaded in (version, active, beneath):
        if loaded is not None:
            ensure_loaded(runtime, loaded)
    base = AdapterChoice((served_name(beneath),) if beneath else ())  # what serves without this registry
    candidate = AdapterChoice((*base.names, served_name(version)))
    current = AdapterChoice((*base.names, *((served_name(active),) if active else ())))
    if progress is not None:
        progress({"event": "gate", "pairs": sum(len(chosen) for chosen in gate_sets.values())})
    started = time.perf_counter()
    max_new_tokens = min(48, settings.model.max_new_tokens)
    questions = load_regression_questions()  # read once: the key and the gate ask the same set
    routing_key = parts.routing.key() if parts.routing is not None else None
    key = regression_key(base_model, system_prompt, max_new_tokens, questions, routing_key)
    base_key = regression_key(base_model, system_prompt, max_new_tokens, questions, None)  # routing aside
    # Where each stack's answers are kept: its top version (None: the bare base, the caches)
    kept_by = {current: active or beneath, base: beneath}
    result = run_gate(
        runtime,
        candidate=candidate,
        active=current,
        base=base,
        pairs={name: _gate_items(chosen, system_prompt, rejected) for name, chosen in gate_sets.items()},
        thresholds=GateThresholds(
            min_learned=settings.train.gate_min_learned,
            max_forgotten=settings.train.gate_max_forgotten,
            max_regression_drop=settings.train.gate_max_regression_drop,
            max_heldout_drop=settings.train.gate_max_heldout_drop,
        ),
        report_path=version.gate_report_path,
        system_prompt=system_prompt,
        max_new_tokens=max_new_tokens,
        regression=questions,
        known_regression=known_regression(registry, kept_by, key, base_key, base_model),
        route=routed(runtime, parts.routing),
    )
    save_regression(registry, result, candidate, version, key)
    if beneath is None:
        save_regression(registry, result, base, None, base_key, base_model)
    return result, time.perf_counter() - started


def _gate_items(pairs: Sequence[Pair], system_prompt: str, rejected: Mapping[int, str]) -> list[GateItem]:
    """The gate's items of ``pairs``: each question as the run trained it, its answer, and the answer a
    correction replaced."""
    from adapters.gate import GateItem
    from adapters.prompt import training_messages

    return [
        GateItem(
            p.instruction,
            training_messages(p.instruction, p.input or "", system_prompt),
            p.output,
            rejected.get(p.id, ""),
        )
        for p in pairs
    ]
