"""CLI area ``adapters``: ``loopbot train [--if-needed]`` and ``loopbot adapters list|promote|rollback``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bot.settings import Settings

if TYPE_CHECKING:
    from adapters.registry import AdapterRegistry
    from feedback.log import FeedbackLog


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``adapters list|promote|rollback``."""
    train = subparsers.add_parser(
        "train", help="train a LoRA on the feedback pairs, gate it, promote it if better"
    )
    train.add_argument(
        "--if-needed",
        action="store_true",
        help="only if there are enough new pairs and the minimum interval has passed (for cron)",
    )
    train.add_argument(
        "--from-active",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="continue from the active adapter, or (--no-from-active) train a fresh LoRA "
        "(default: LOOPBOT_TRAIN_CONTINUE_FROM_ACTIVE, on)",
    )
    train.add_argument("--no-promote", action="store_true", help="train and gate, but never promote")
    train.add_argument(
        "--eval-fraction",
        type=_fraction,
        default=0.0,
        help="keep this share of the imported (taught) pairs out of training as an eval set: eval loss "
        "per epoch (the version's learning_curve.csv/.png) and how many the candidate answers, reported "
        "but never gated (default 0)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--json", action="store_true", help="print the cycle report as JSON")
    train.add_argument("--guild", help=GUILD_HELP)
    train.add_argument(
        "--member", help=MEMBER_HELP + "; with --guild, trained over that server's active adapter"
    )
    train.set_defaults(handler=train_handler)

    adapters = subparsers.add_parser("adapters", help="list, promote or roll back adapter versions")
    actions = adapters.add_subparsers(dest="adapters_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="versions, the active one, metrics, forgotten data still inside"
    )
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.add_argument("--guild", help=GUILD_HELP)
    listing.add_argument("--member", help=MEMBER_HELP)
    listing.set_defaults(handler=list_handler)
    promote = actions.add_parser("promote", help="make a version the active adapter")
    promote.add_argument("version", help="e.g. v0003 or 3")
    promote.add_argument("--guild", help=GUILD_HELP)
    promote.add_argument("--member", help=MEMBER_HELP)
    promote.set_defaults(handler=promote_handler)
    rollback = actions.add_parser("rollback", help="go back to the previously active adapter")
    rollback.add_argument("--guild", help=GUILD_HELP)
    rollback.add_argument("--member", help=MEMBER_HELP)
    rollback.set_defaults(handler=rollback_handler)


GUILD_HELP = "the Discord server whose adapters to act on (default: the only one there is)"
MEMBER_HELP = "a member's own adapter (Discord user id), trained on their personal pairs only"


@contextlib.contextmanager
def _guild_log(args: argparse.Namespace, settings: Settings) -> Iterator[tuple[str, FeedbackLog]]:
    """The feedback log and the guild this command acts on (``--guild``, or the only one).

    Adapters trained before per-guild learning are first given to that one guild."""
    from bot.usecases.serving import adopt_legacy_adapters, resolve_guild
    from bot.wiring import build_feedback_log

    log = build_feedback_log(settings)
    try:
        adopt_legacy_adapters(settings.adapters_dir, log)
        yield resolve_guild(settings.adapters_dir, log, args.guild), log
    finally:
        log.close()


@contextlib.contextmanager
def _scope(
    args: argparse.Namespace, settings: Settings, *, over_guild: bool = False
) -> Iterator[tuple[str | None, str | None, FeedbackLog]]:
    """``(guild, member, log)``: the adapters a command acts on, a member's own (``--member``) or a
    server's (``--guild``, or the only one). With both (``over_guild``: training only), the member's
    own, trained over that server's active adapter (they are served stacked on it there)."""
    from adapters.errors import AdapterError
    from bot.wiring import build_feedback_log

    member = getattr(args, "member", None)
    if not member:
        with _guild_log(args, settings) as (guild, log):
            yield guild, None, log
        return
    if args.guild and not over_guild:
        raise AdapterError(
            "Pass --guild or --member, not both: a member's own adapters are the same in every server."
        )
    log = build_feedback_log(settings)
    try:
        yield args.guild or None, str(member), log
    finally:
        log.close()


def _registry(settings: Settings, guild: str | None, member: str | None) -> AdapterRegistry:
    from adapters.registry import member_registry
    from bot.wiring import build_registry

    return member_registry(settings.adapters_dir, member) if member else build_registry(settings, str(guild))


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """Send everything written to stdout (gptqmodel logs there) to stderr, so ``--json`` stays parseable."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def train_handler(args: argparse.Namespace, settings: Settings) -> int:
    """Run one training cycle and print what happened."""
    from bot.usecases.training import run_training_cycle
    from bot.wiring import build_training_parts

    with _scope(args, settings, over_guild=True) as (guild, member, log), _stdout_to_stderr(args.json):
        parts = build_training_parts(settings, log, guild_id=guild, member_id=member)
        report = run_training_cycle(
            settings,
            parts,
            if_needed=args.if_needed,
            from_active=args.from_active,
            show_progress=not args.no_progress,
            promote=not args.no_promote,
            eval_fraction=args.eval_fraction,
        )
    if args.json:
        gate = report.gate.metrics() if report.gate else None
        print(
            json.dumps(
                {
                    "trained": report.trained,
                    "reason": report.reason,
                    "version": report.version,
                    "promoted": report.promoted,
                    "train_pairs": report.train_pairs,
                    "heldout_pairs": report.heldout_pairs,
                    "rephrased_rows": report.rephrased_rows,
                    "gate": gate,
                    "gate_report": str(report.gate.report_path) if report.gate else None,
                    "train": report.train_metrics,
                    "seconds": round(report.seconds, 1),
                    "gate_seconds": round(report.gate_seconds, 1),
                }
            )
        )
    else:
        print(report.summary())
        if report.gate is not None:
            print(f"  {report.gate.summary()}")
            print(f"  report: {report.gate.report_path}")
        evaluated = report.train_metrics.get("eval_losses") or []
        if evaluated and report.version is not None:
            losses = ", ".join(f"{loss:.2f}" for _, loss in evaluated)
            curve = parts.registry.get(report.version).learning_curve_path
            print(
                f"  eval loss after each epoch ({report.train_metrics.get('eval_rows')} held-out rows): {losses}"
            )
            print(f"  learning curve: {curve} and {curve.with_suffix('.png').name}")
    return 0


def _fraction(value: str) -> float:
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction < 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a share in [0, 1): e.g. 0.2 keeps a fifth out")
    return fraction


def _rows(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]]:
    from bot.usecases.serving import known_guilds
    from bot.wiring import build_feedback_log

    if not args.guild and not args.member:
        log = build_feedback_log(settings)
        try:
            if not known_guilds(settings.adapters_dir, log):
                return []  # no server has used the bot yet: nothing was trained anywhere
        finally:
            log.close()
    with _scope(args, settings) as (guild, member, log):
        registry = _registry(settings, guild, member)
        forgotten = log.forgotten_pair_ids()
    active = registry.active()
    rows = []
    for v in registry.list():
        gate = v.metrics.get("gate", {})
        rows.append(
            {
                "version": v.version,
                "active": active is not None and v.version == active.version,
                "parent": v.parent,
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created)),
                "pairs": v.pair_count,
                "heldout_f1": gate.get("heldout_f1"),
                "regression_accuracy": gate.get("regression_accuracy"),
                "final_loss": v.metrics.get("train", {}).get("final_loss"),
                # Still trained on data a member asked to forget: replaced by the next retrain.
                "forgotten_pairs": len(v.forgotten_pairs(forgotten)),
            }
        )
    return rows


def list_handler(args: argparse.Namespace, settings: Settings) -> int:
    """Print the versions (``*`` marks the active one)."""
    rows = _rows(args, settings)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no adapters yet: run `loopbot train` (the bare base model is served)")
        return 0

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    print(f"  {'version':8} {'created':16} {'pairs':>5} {'heldF1':>7} {'regr':>6} {'loss':>7}  notes")
    for r in rows:
        notes = f"contains {r['forgotten_pairs']} forgotten pair(s)" if r["forgotten_pairs"] else ""
        print(
            f"{'*' if r['active'] else ' '} {r['version']:8} {r['created']:16} {r['pairs']:>5} "
            f"{fmt(r['heldout_f1']):>7} {fmt(r['regression_accuracy']):>6} {fmt(r['final_loss']):>7}  {notes}"
        )
    if not any(r["active"] for r in rows):
        print("(no version is active: the bare base model is served)")
    return 0


def promote_handler(args: argparse.Namespace, settings: Settings) -> int:
    """Make ``args.version`` active. A running bot picks it up at its next registry sync."""
    from bot.usecases.serving import promote

    with _scope(args, settings) as (guild, member, log):
        version = promote(
            _registry(settings, guild, member), args.version, forgotten_pair_ids=log.forgotten_pair_ids()
        )
    print(f"{version.version} is now the active adapter")
    return 0


def rollback_handler(args: argparse.Namespace, settings: Settings) -> int:
    """Re-activate the previously active version."""
    from bot.usecases.serving import rollback

    with _scope(args, settings) as (guild, member, log):
        version = rollback(_registry(settings, guild, member), forgotten_pair_ids=log.forgotten_pair_ids())
    print(f"rolled back: {version.version if version else 'the bare base model'} is now active")
    return 0
