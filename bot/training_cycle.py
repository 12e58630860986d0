"""One retraining cycle, assembled from settings: pairs → train → gate → promote → hot swap.

The CLI (`loopbot train`), the bot's scheduler and the demo all call :func:`run_training_cycle`.
The libraries do the work (``adapters.training``, ``adapters.gate``, ``adapters.swap``,
``feedback.log``); this module only decides what to feed them from the settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.gate import GateResult
    from adapters.registry import AdapterRegistry
    from bot.settings import Settings
    from feedback.records import Pair

SPLIT_SEED = 0  # fixed: a question stays on the same side of the split as the log grows


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
    gate: GateResult | None = None
    train_metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

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


def training_options(settings: Settings) -> Any:
    """``TrainingOptions`` from ``settings.train`` (+ the model's thread count)."""
    from adapters.training import TrainingOptions

    return TrainingOptions(
        rank=settings.train.rank,
        alpha=settings.train.alpha,
        steps=settings.train.steps,
        batch_size=settings.train.batch_size,
        learning_rate=settings.train.learning_rate,
        threads=settings.model.threads,
    )


def new_pair_count(pairs: Sequence[Pair], registry: AdapterRegistry) -> int:
    """Pairs not used by the newest version (all of them when nothing was trained yet)."""
    versions = registry.list()
    seen = set(versions[-1].pair_ids) | set(versions[-1].heldout_pair_ids) if versions else set()
    return sum(1 for p in pairs if str(p.id) not in seen)


def needs_training(
    settings: Settings, pairs: Sequence[Pair], registry: AdapterRegistry, now: float | None = None
) -> tuple[bool, str]:
    """The ``--if-needed`` rule: enough new pairs AND the minimum interval since the last version."""
    versions = registry.list()
    fresh = new_pair_count(pairs, registry)
    if fresh < settings.train.min_pairs:
        return False, f"{fresh} new pair(s) since the last run, {settings.train.min_pairs} needed"
    if versions:
        hours = ((now or time.time()) - versions[-1].created) / 3600
        if hours < settings.train.min_interval_hours:
            return False, (
                f"last run {hours:.1f} h ago, the minimum interval is {settings.train.min_interval_hours:g} h"
            )
    return True, f"{fresh} new pair(s)"


def _heldout_items(pairs: Sequence[Pair], system_prompt: str) -> list[Any]:
    from adapters.gate import HeldOutItem
    from adapters.training import pair_messages

    return [
        HeldOutItem(p.instruction, pair_messages(p.instruction, p.input or "", system_prompt), p.output)
        for p in pairs
    ]


def _anchors(settings: Settings, registry: AdapterRegistry, runtime: Any) -> list[Any]:
    """The replayed base-model answers, generated once per base model, prompt and count.

    Cached in the registry directory: in the running bot, generating them queues behind (and
    delays) members' questions, so only the first cycle pays for it.
    """
    import hashlib
    import json

    from adapters._calibration import INSTRUCTIONS
    from adapters.registry import write_json_atomic
    from adapters.training import TrainingExample, anchor_examples
    from bot.wiring import resolve_model_base

    questions = INSTRUCTIONS[: settings.train.anchors]
    if not questions:
        return []
    key = json.dumps([resolve_model_base(settings), settings.model.system_prompt, questions])
    cache = registry.root / f"anchors-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
    try:
        return [TrainingExample(**row) for row in json.loads(cache.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        pass  # not generated yet, or unreadable: generate again
    anchors = anchor_examples(runtime, questions, settings.model.system_prompt)
    write_json_atomic(cache, [asdict(a) for a in anchors])
    return anchors


def run_training_cycle(
    settings: Settings,
    *,
    runtime: Any = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    if_needed: bool = False,
    from_active: bool = False,
    show_progress: bool = False,
    promote: bool = True,
) -> CycleReport:
    """Train a candidate on the feedback log's pairs, gate it against the active adapter, promote it
    if it passes and, when ``runtime`` is given (the running bot's), hot-swap it in.

    Without ``runtime`` a temporary one is loaded for the gate and closed afterwards. Forgotten
    members' pairs are never used (``FeedbackLog.pairs`` leaves them out) and a parent adapter that
    still holds them is not continued from. ``progress`` receives the training process's events.
    """
    from adapters.gate import GateThresholds, run_gate
    from adapters.swap import ensure_loaded, swap_to
    from adapters.training import NotEnoughPairs, examples_from_pairs, train_adapter
    from bot.wiring import build_feedback_log, build_registry, build_runtime, resolve_model_base
    from feedback.dataset import split_pairs

    started = time.perf_counter()
    registry = build_registry(settings)
    log = build_feedback_log(settings)
    try:
        pairs = log.pairs()
        forgotten = {str(i) for i in log.forgotten_pair_ids()}
    finally:
        log.close()
    if if_needed:
        needed, why = needs_training(settings, pairs, registry)
        if not needed:
            return CycleReport(trained=False, reason=why)
    train_pairs, heldout_pairs = split_pairs(pairs, settings.train.eval_fraction, SPLIT_SEED)
    if len(train_pairs) < settings.train.min_pairs:
        raise NotEnoughPairs(
            f"Only {len(train_pairs)} training pair(s) ({len(pairs)} in the feedback log, {len(heldout_pairs)} "
            f"held out for the gate); {settings.train.min_pairs} are needed (LOOPBOT_TRAIN_MIN_PAIRS). "
            "Collect more 👍 answers and corrections; nothing was trained."
        )
    system_prompt = settings.model.system_prompt
    active = registry.active()
    parent = None
    if from_active and active is not None and not forgotten & set(active.pair_ids):
        parent = active
    own_runtime = runtime is None
    gate_runtime = build_runtime(settings) if own_runtime else runtime
    try:
        anchors = _anchors(settings, registry, gate_runtime)
        with registry.training_lock():
            registry.clean_staging()  # leftovers of killed runs; no other run is live while we hold it
            version = train_adapter(
                registry,
                base_model=resolve_model_base(settings),
                examples=examples_from_pairs(train_pairs, system_prompt),
                anchors=anchors,
                options=training_options(settings),
                parent=parent,
                min_examples=settings.train.min_pairs,
                on_event=progress,
                show_progress=show_progress,
            )
        report = CycleReport(
            trained=True,
            reason="trained",
            version=version.version,
            train_pairs=len(train_pairs),
            heldout_pairs=len(heldout_pairs),
            train_metrics=dict(version.metrics.get("train", {})),
        )
        ensure_loaded(gate_runtime, version)
        if active is not None:
            ensure_loaded(gate_runtime, active)
        result = run_gate(
            gate_runtime,
            candidate=version.version,
            active=active.version if active else None,
            heldout=_heldout_items(heldout_pairs, system_prompt),
            thresholds=GateThresholds(settings.train.gate_min_gain, settings.train.gate_max_regression_drop),
            report_path=version.path / "gate_report.csv",
            system_prompt=system_prompt,
            max_new_tokens=min(48, settings.model.max_new_tokens),
        )
        report.gate = result
        registry.update_metadata(
            version.version,
            metrics={**version.metrics, "gate": result.metrics()},
            gate_report=str(result.report_path),
            heldout_pair_ids=[str(p.id) for p in heldout_pairs],
        )
        if result.promote and promote:
            report.previous = active.version if active else None
            registry.promote(version.version)
            report.promoted = True
            if not own_runtime:
                swap_to(gate_runtime, registry.get(version.version))
                report.swapped = True
        elif not own_runtime and version.version in gate_runtime.adapters:
            gate_runtime.unload_adapter(version.version)  # a rejected candidate is not kept in memory
    finally:
        if own_runtime:
            gate_runtime.close()
    report.seconds = time.perf_counter() - started
    return report
