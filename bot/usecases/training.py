"""Training use cases: one retraining cycle (pairs → train → gate → promote → hot swap), promote, roll back.

The CLI (``loopbot train``, ``loopbot adapters``), the bot (``/train``, the schedule, ``/adapter``)
and the demo call these with their own parts: the feedback log and registry they already hold, and
the runtime that serves (or a loader for a temporary one). The libraries do the work
(``adapters.training``, ``adapters.gate``, ``adapters.swap``, ``feedback.log``); this module only
decides what to feed them from the settings.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.evaluation import RegressionQuestion
    from adapters.gate import GateResult
    from adapters.registry import AdapterRegistry, AdapterVersion
    from adapters.routing import QuestionRouting
    from adapters.runtime import Runtime
    from adapters.training import TrainingExample, TrainingOptions
    from bot.settings import Settings
    from feedback.log import FeedbackLog
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
    # Which questions each adapter answers as served (adapters/routing.py); the gate judges through
    # it. None: every adapter answers every question.
    routing: QuestionRouting | None = None


def kept_guild_pairs(
    shared: Sequence[Pair], beneath: AdapterVersion | None, member_pairs: int, per_member_pair: int = 2
) -> list[Pair]:
    """For a member's adapter trained over ``beneath`` (the guild's): the shared pairs ``beneath`` was
    trained on and still in force, newest first, at most ``per_member_pair`` for each of the member's
    pairs. Trained beside the member's, they tell the member's LoRA to keep the guild's answers
    (bench/member_adapter.py); a shared pair may train a private adapter, never the other way round.
    Their ids join the version's pair ids, so forgetting their authors retires it."""
    if beneath is None:
        return []
    wanted = set(beneath.pair_ids)
    chosen = [p for p in shared if str(p.id) in wanted]
    chosen.sort(key=lambda p: p.id, reverse=True)
    return chosen[: per_member_pair * member_pairs]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def describe_progress(event: Any) -> str:
    """A cycle's progress event (from the training process, or the gate's) in a few words."""
    if not isinstance(event, dict):
        return str(event)[:200]
    kind = event.get("event")
    if kind == "step" and event.get("total"):
        step, total = int(event.get("step", 0)), int(event["total"])
        remaining = ""
        if step and event.get("seconds"):
            remaining = _duration(float(event["seconds"]) / step * (total - step))
        if event.get("until_learned"):  # it stops once every taught fact is learned
            left = f", at most {remaining} left" if remaining else ""
            return f"training: step {step} of at most {total} (until the taught facts are learned){left}"
        phase = " (preferences)" if event.get("phase") == "preference" else ""
        left = f", about {remaining} left" if remaining else ""
        return f"training: step {step} of {total}{phase}{left}"
    if kind == "learned":
        return f"training: {event.get('learned')} of {event.get('of')} taught facts learned at step {event.get('step')}"
    if kind == "eval" and event.get("loss") is not None:
        return f"training: eval loss {float(event['loss']):.2f} at step {event.get('step')} of {event.get('total')}"
    if kind == "start":
        return "training: loading the model"
    if kind == "done":
        return f"trained in {_duration(float(event.get('train_seconds', 0)))}; the gate is next"
    if kind == "gate":
        return f"gate: the candidate and the active adapter answer {event.get('pairs')} pairs and the regression set"
    return str(kind or event)[:200]


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


def new_pair_count(pairs: Sequence[Pair], registry: AdapterRegistry) -> int:
    """Pairs not used by the newest version (all of them when nothing was trained yet)."""
    versions = registry.list()
    seen = set(versions[-1].pair_ids) | set(versions[-1].heldout_pair_ids) if versions else set()
    return sum(1 for p in pairs if str(p.id) not in seen)


def needs_training(
    settings: Settings,
    pairs: Sequence[Pair],
    registry: AdapterRegistry,
    now: float | None = None,
    *,
    beneath: AdapterVersion | None = None,
) -> tuple[bool, str]:
    """The ``--if-needed`` rule: enough new pairs AND the minimum interval since the last version.

    A member's adapter (``beneath``: the guild's active adapter it is trained over) is also retrained
    when its latest version (promoted or not: a refused retrain is not retried) was trained over
    another: it learned over, and kept the pairs of, a guild adapter no longer served beneath it."""
    versions = registry.list()
    if versions and len(pairs) >= settings.train.min_pairs and beneath is not None:
        over = versions[-1].train_config.get("beneath_adapter")
        if over is None or Path(over).resolve() != beneath.path.resolve():
            was = Path(over).name if over else "none"
            return True, (
                f"the guild's adapter changed since {versions[-1].version} was trained ({was} -> {beneath.version})"
            )
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


def split_for_gate(
    pairs: Sequence[Pair], active: AdapterVersion | None, eval_fraction: float
) -> tuple[list[Pair], dict[str, list[Pair]]]:
    """(train pairs, the gate's pair sets ``taught`` / ``retained`` / ``heldout``).

    Corrections and taught (imported) pairs are always trained on: they are what the loop must learn.
    A share of the 👍 answers is held out to check the answer style, chosen among those the active
    version did not hold out, so a pair held out in one run is trained on in the next and none is
    withheld for good. ``taught``: trained pairs the active version was not trained on; ``retained``: the rest.
    """
    from feedback.dataset import split_pairs

    rested = set(active.heldout_pair_ids) if active is not None else set()
    eligible = [p for p in pairs if p.kind == "positive" and str(p.id) not in rested]
    _, heldout = split_pairs(eligible, eval_fraction, SPLIT_SEED)
    held = {p.id for p in heldout}
    train = [p for p in pairs if p.id not in held]
    earlier = set(active.pair_ids) if active is not None else set()
    sets = {
        "taught": [p for p in train if str(p.id) not in earlier],
        "retained": [p for p in train if str(p.id) in earlier],
        "heldout": heldout,
    }
    return train, sets


def held_out_taught(pairs: Sequence[Pair], eval_fraction: float) -> list[Pair]:
    """The taught (imported) pairs an eval set keeps out of training: ``eval_fraction`` of their
    questions, the same ones every run (a question stays on its side as the data grows)."""
    from feedback.dataset import split_pairs

    _, held_out = split_pairs([p for p in pairs if p.kind == "taught"], eval_fraction, SPLIT_SEED)
    return held_out


def _gate_items(pairs: Sequence[Pair], system_prompt: str, rejected: Mapping[int, str]) -> list[Any]:
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


def rejected_answers(log: FeedbackLog, pairs: Sequence[Pair]) -> dict[int, str]:
    """For each correction among ``pairs`` (by pair id): the answer it replaced, which members
    rejected. The gate counts how often it comes back; preference training trains against it."""
    corrected = {p.id: p.answer_id for p in pairs if p.kind == "corrected" and p.answer_id is not None}
    texts = log.answer_texts(corrected.values())
    return {pair_id: texts[answer_id] for pair_id, answer_id in corrected.items() if answer_id in texts}


def anchor_count(settings: Settings, pairs: int) -> int:
    """How many anchors a run of ``pairs`` trained pairs replays: ``anchors``, or ``anchors_per_pair``
    per pair when that is more (up to the 46 there are); none when ``anchors`` is 0."""
    from adapters._calibration import INSTRUCTIONS

    if settings.train.anchors == 0:
        return 0
    wanted = max(settings.train.anchors, math.ceil(settings.train.anchors_per_pair * pairs))
    return min(len(INSTRUCTIONS), wanted)


def _model_stamp(base_model: str) -> float | None:
    """When the model's files were written (a model prepared again answers anew)."""
    model = Path(base_model)
    for path in (model / "config.json", model):
        if path.exists():
            return path.stat().st_mtime
    return None


def _anchors(
    settings: Settings, registry: AdapterRegistry, base_model: str, runtime: Callable[[], Runtime], count: int
) -> list[TrainingExample]:
    """The replayed base-model answers, generated once per base model and prompt, per question.

    Cached beside the model (:class:`adapters.registry.BaseModelCache`, shared by every server, member
    and data dir) and by the registry: in the running bot, generating them takes rows members'
    questions do not need (background work), so only the first cycle on a machine pays for it;
    ``runtime`` is asked for the model only then.
    """
    import hashlib
    import json

    from adapters.prompt import training_messages
    from adapters.registry import BaseModelCache
    from adapters.training import TrainingExample, anchor_examples, anchor_questions

    questions = anchor_questions(count)
    if not questions:
        return []
    system_prompt = settings.model.system_prompt
    key = json.dumps([base_model, _model_stamp(base_model), system_prompt])
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


def _regression_key(
    settings: Settings,
    base_model: str,
    max_new_tokens: int,
    questions: Sequence[RegressionQuestion],
    routing: QuestionRouting | None,
) -> str:
    """What regression answers depend on besides the adapters: the model, the prompt, the questions
    and how questions are routed (None: the bare base's answers, which routing does not change)."""
    import hashlib
    import json

    asked = [[q.question, *q.expected_any] for q in questions]
    route = routing.key() if routing is not None else None
    stamp = _model_stamp(base_model)
    key = json.dumps([base_model, stamp, settings.model.system_prompt, max_new_tokens, asked, route])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _known_regression(
    registry: AdapterRegistry,
    stacks: dict[tuple[str, ...], Path | None],
    key: str,
    base_key: str,
    base_model: str,
) -> dict[tuple[str, ...], list[Any]]:
    """Regression answers saved by earlier gates for these stacks (a version's own file under ``key``,
    or for the bare base the model's cache or the registry's under ``base_key``), when they were
    answered with the same model, prompt and set."""
    import json

    from adapters.evaluation import RegressionResult
    from adapters.registry import REGRESSION_FILE, BaseModelCache

    known = {}
    for stack, version_dir in stacks.items():
        kept: list[Any] = []
        if version_dir is None:  # the registry's own first
            kept = [registry.read_cache(f"regression-{base_key}")]
            kept.append(BaseModelCache(base_model).read(f"regression-{base_key}"))
        else:
            with contextlib.suppress(OSError, ValueError):  # never saved, or scrubbed by a forget
                kept = [json.loads((version_dir / REGRESSION_FILE).read_text(encoding="utf-8"))]
        wanted = base_key if version_dir is None else key
        for saved in kept:
            try:
                if saved["key"] == wanted and tuple(saved["stack"]) == stack:
                    known[stack] = [RegressionResult(*row) for row in saved["answers"]]
                    break
            except (ValueError, TypeError, KeyError):
                continue  # absent, or another version's format: answer again
    return known


def _save_regression(
    registry: AdapterRegistry,
    result: GateResult,
    stack: tuple[str, ...],
    version_dir: Path | None,
    key: str,
    base_model: str = "",
) -> None:
    """Keep ``stack``'s answers from this gate for the next ones (see :func:`_known_regression`);
    the bare base's (``version_dir`` None) in the model's cache and the registry's."""
    from dataclasses import astuple

    from adapters.registry import REGRESSION_FILE, BaseModelCache, write_json_atomic

    answers = result.regression_answers.get(stack)
    if answers is None:
        return
    saved = {"key": key, "stack": list(stack), "answers": [list(astuple(a)) for a in answers]}
    if version_dir is None:
        registry.write_cache(f"regression-{key}", saved)
        if base_model:
            BaseModelCache(base_model).write(f"regression-{key}", saved)
    else:
        write_json_atomic(version_dir / REGRESSION_FILE, saved)


def _close_all(runtimes: list[Runtime]) -> None:
    """Close and drop the runtimes, so their models' memory can go back to the OS (the training
    process's start trims the heap) before anything else is loaded."""
    import gc

    while runtimes:
        runtimes.pop().close()
    gc.collect()  # a model kept alive by a reference cycle would otherwise wait for a collection


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
    from adapters.evaluation import load_regression_questions
    from adapters.gate import GateThresholds, Served, run_gate, stack_names
    from adapters.registry import GATE_REPORT_FILE
    from adapters.routing import routed
    from adapters.swap import ensure_loaded, served_name, swap_to
    from adapters.training import (
        TAUGHT_KINDS,
        NotEnoughPairs,
        examples_from_pairs,
        preference_examples,
        rephrased_examples,
        train_adapter,
    )
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
    forgotten = parts.feedback_log.forgotten_pair_ids()
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
    heldout_pairs = gate_sets["heldout"]
    if len(train_pairs) < settings.train.min_pairs:
        raise NotEnoughPairs(
            f"Only {len(train_pairs)} training pair(s) ({len(pairs)} in the feedback log, {len(heldout_pairs)} "
            f"held out for the gate); {settings.train.min_pairs} are needed (LOOPBOT_TRAIN_MIN_PAIRS). "
            "Collect more 👍 answers and corrections; nothing was trained."
        )
    system_prompt = settings.model.system_prompt
    base_model = parts.base_model()
    parent = None
    if from_active is None:
        from_active = settings.train.continue_from_active
    if from_active and active is not None and not active.forgotten_pairs(forgotten):
        parent = active
    own_runtime = parts.runtime is None
    if parts.runtime is None and parts.load_runtime is None:
        raise TypeError("TrainingParts needs a runtime or load_runtime")
    temporary: list[Runtime] = []  # without parts.runtime: the cycle's own, closed when done

    def runtime() -> Runtime:
        if parts.runtime is not None:
            return parts.runtime
        if not temporary:
            temporary.append(parts.load_runtime())  # type: ignore[misc]  # checked above
        return temporary[0]

    try:
        rejected = rejected_answers(parts.feedback_log, train_pairs)
        kept = kept_guild_pairs(parts.feedback_log.pairs(), beneath, len(train_pairs)) if beneath else []
        count = anchor_count(settings, len(train_pairs) + len(kept))
        anchors = _anchors(settings, registry, base_model, runtime, count)
        examples = examples_from_pairs([*train_pairs, *kept], system_prompt)
        rephrased = []
        taught = [p for p in train_pairs if p.kind in TAUGHT_KINDS]
        if settings.train.rephrase_corrections and taught:
            rephrased = rephrased_examples(runtime(), taught, system_prompt)
        # A temporary runtime serves nobody while the training process runs: its model goes, so the
        # two processes do not hold two models at once (bench/first_run.py), and is loaded again for
        # the gate (a few seconds). A bot's runtime stays: it answers members meanwhile.
        _close_all(temporary)
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
                shares_cores=not own_runtime,  # the bot's runtime answers members meanwhile
            )
        report = CycleReport(
            trained=True,
            reason="trained",
            version=version.version,
            train_pairs=len(train_pairs),
            heldout_pairs=len(heldout_pairs),
            rephrased_rows=len(rephrased),
            guild_rows=len(kept),
            train_metrics=dict(version.metrics.get("train", {})),
        )
        gate_runtime = runtime()
        ensure_loaded(gate_runtime, version)
        if active is not None:
            ensure_loaded(gate_runtime, active)
        candidate_served: Served = served_name(version)
        active_served: Served | None = served_name(active) if active else None
        base_served: Served | None = None
        if beneath is not None:  # compared as served: each stacked over the guild's adapter
            ensure_loaded(gate_runtime, beneath)
            base_served = (served_name(beneath),)
            candidate_served = (*base_served, served_name(version))
            active_served = (*base_served, *((served_name(active),) if active else ()))
        if progress is not None:
            progress({"event": "gate", "pairs": sum(len(chosen) for chosen in gate_sets.values())})
        gate_started = time.perf_counter()
        max_new_tokens = min(48, settings.model.max_new_tokens)
        questions = load_regression_questions()  # read once: the key and the gate ask the same set
        regression_key = _regression_key(settings, base_model, max_new_tokens, questions, parts.routing)
        base_key = _regression_key(settings, base_model, max_new_tokens, questions, None)
        # Where each stack's answers are kept: the top version's own directory (None: the bare base)
        saved_in = {
            stack_names(active_served): active.path if active else beneath.path if beneath else None,
            stack_names(base_served): beneath.path if beneath else None,
        }
        result = run_gate(
            gate_runtime,
            candidate=candidate_served,
            active=active_served,
            base=base_served,
            pairs={name: _gate_items(chosen, system_prompt, rejected) for name, chosen in gate_sets.items()},
            thresholds=GateThresholds(
                min_learned=settings.train.gate_min_learned,
                max_forgotten=settings.train.gate_max_forgotten,
                max_regression_drop=settings.train.gate_max_regression_drop,
                max_heldout_drop=settings.train.gate_max_heldout_drop,
            ),
            report_path=version.path / GATE_REPORT_FILE,
            system_prompt=system_prompt,
            max_new_tokens=max_new_tokens,
            regression=questions,
            known_regression=_known_regression(registry, saved_in, regression_key, base_key, base_model),
            route=routed(gate_runtime, parts.routing),
        )
        _save_regression(registry, result, stack_names(candidate_served), version.path, regression_key)
        if beneath is None:
            _save_regression(registry, result, (), None, base_key, base_model)
        report.gate = result
        report.gate_seconds = time.perf_counter() - gate_started
        registry.update_metadata(
            version.version,
            metrics={**version.metrics, "gate": result.metrics()},
            gate_report=str(result.report_path),
            # The eval pairs too: kept out of this run, trained by the next one without --eval-fraction,
            # and a forget of their author scrubs this version's copy of them (eval.jsonl).
            heldout_pair_ids=[str(p.id) for p in [*heldout_pairs, *gate_sets.get("eval", [])]],
        )
        if result.promote and promote:
            report.previous = active.version if active else None
            registry.promote(version.version)
            report.promoted = True
            if not own_runtime:
                serve = parts.serve or (lambda promoted: swap_to(gate_runtime, promoted))
                serve(registry.get(version.version))
                report.swapped = True
        elif not own_runtime and served_name(version) in gate_runtime.adapters:
            gate_runtime.unload_adapter(served_name(version))  # a rejected candidate is not kept in memory
    finally:
        _close_all(temporary)
    report.seconds = time.perf_counter() - started
    return report


def promote(
    registry: AdapterRegistry,
    version: str,
    *,
    forgotten_pair_ids: set[int] | frozenset[int] = frozenset(),
    serve: Callable[[AdapterVersion | None], Any] | None = None,
) -> AdapterVersion:
    """Make ``version`` the active adapter and, given ``serve`` (the running runtime's swap), answer
    with it from now on. A version trained on a forgotten member's pairs is refused.

    Requests already queued keep the adapter they were submitted with."""
    from adapters.errors import AdapterError

    target = registry.get(version)
    stale = target.forgotten_pairs(forgotten_pair_ids)
    if stale:
        raise AdapterError(
            f"{target.version} was trained on {len(stale)} pair(s) of a member who asked to be forgotten "
            "or not to be learned from, "
            "so it can no longer be served. Promote a newer version or retrain (`loopbot train`)."
        )
    promoted = registry.promote(target.version)
    if serve is not None:
        serve(promoted)
    return promoted


def rollback(
    registry: AdapterRegistry,
    *,
    forgotten_pair_ids: set[int] | frozenset[int] = frozenset(),
    serve: Callable[[AdapterVersion | None], Any] | None = None,
) -> AdapterVersion | None:
    """Re-activate the previously active version (None: the bare base model) and serve it. Versions
    trained on a forgotten member's pairs are passed over."""
    previous = registry.rollback()
    while previous is not None and previous.forgotten_pairs(forgotten_pair_ids):
        previous = registry.rollback()
    if serve is not None:
        serve(previous)
    return previous


def retire_forgotten(
    registry: AdapterRegistry, forgotten_pair_ids: set[int]
) -> tuple[bool, AdapterVersion | None]:
    """After a forget: scrub the stored data that held the forgotten pairs, and if the active version
    was trained on any, make the newest version without them active (or the bare base model).

    Returns ``(changed, the version now active)`` (None: the base model)."""
    registry.scrub_pairs({str(i) for i in forgotten_pair_ids})
    active = registry.active()
    if active is None or not active.forgotten_pairs(forgotten_pair_ids):
        return False, active
    clean = [v for v in registry.list() if not v.forgotten_pairs(forgotten_pair_ids)]
    if clean:
        return True, registry.promote(clean[-1].version)
    registry.deactivate("forget")
    return True, None


def serve_active(runtime: Runtime, registry: AdapterRegistry) -> str | None:
    """Make ``runtime`` serve the registry's active version; the name served (None: the base model).

    A version that cannot be served (missing, corrupt, trained for another base) never stops the
    bot or the CLI from answering: the bare base model is served and a warning says why."""
    import logging

    from adapters.errors import AdapterError
    from adapters.swap import swap_to, sync_with_registry

    try:
        return sync_with_registry(runtime, registry)
    except AdapterError as error:
        logging.getLogger(__name__).warning("serving the bare base model: %s", error)
        swap_to(runtime, None)
        return None
