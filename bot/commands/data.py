"""CLI areas `dataset` and `feedback`: export/import Alpaca pairs, feedback statistics.

loopbot dataset export --format alpaca --out FILE [--eval-fraction F] [--kinds ...] [--since ISO]
loopbot dataset import FILE [--guild ID | --member ID] [--source NAME]
loopbot feedback stats [--guild ID] [--json]
loopbot feedback retention [--days N]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bot.wiring import build_feedback_log

if TYPE_CHECKING:
    from bot.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `dataset` and `feedback` sub-commands."""
    dataset = subparsers.add_parser("dataset", help="export or import Alpaca training pairs")
    actions = dataset.add_subparsers(dest="action", required=True, metavar="ACTION")

    export = actions.add_parser("export", help="write the training pairs as Alpaca JSON")
    export.add_argument(
        "--format",
        choices=["alpaca", "preference"],
        default="alpaca",
        help="alpaca: instruction/input/output training pairs (default); preference: "
        "instruction/input/chosen/rejected from answers that were voted down and corrected",
    )
    export.add_argument(
        "--out",
        type=Path,
        required=True,
        help="train file; the eval set goes next to it with .eval before the suffix (a.json -> a.eval.json)",
    )
    export.add_argument(
        "--eval-fraction",
        type=float,
        default=0.0,
        help="share of questions held out into FILE with .eval before the suffix (default 0: one file)",
    )
    export.add_argument(
        "--kinds",
        nargs="+",
        default=["positive", "corrected", "taught"],
        choices=["positive", "corrected", "taught", "negative"],
        help="pair kinds to export (default: the training targets, positive, corrected and taught)",
    )
    export.add_argument(
        "--since", type=_parse_since, help="only pairs derived at or after this ISO date/time (UTC)"
    )
    export.add_argument("--seed", type=int, default=0, help="seed of the train/eval split")
    export.add_argument(
        "--guild", help="only this server's pairs (and imported ones); default: every server's shared pairs"
    )
    export.set_defaults(handler=export_command)

    import_ = actions.add_parser(
        "import",
        help="teach facts from Alpaca JSON/JSONL or question/answer JSONL",
        description="Each row becomes a taught pair, learned like a correction at the next "
        "`loopbot train` (a row's own kind, e.g. positive, is kept).",
    )
    import_.add_argument("file", type=Path, help="Alpaca JSON array or JSONL file")
    import_.add_argument("--source", help="label stored with the pairs (default: the file name)")
    where = import_.add_mutually_exclusive_group()
    where.add_argument("--guild", help="teach this server's adapter only (default: every server's)")
    where.add_argument(
        "--member",
        help="teach this member's own adapter only (private: never shared, gone with their /forget)",
    )
    import_.set_defaults(handler=import_command)

    feedback = subparsers.add_parser("feedback", help="inspect the feedback log")
    feedback_actions = feedback.add_subparsers(dest="action", required=True, metavar="ACTION")
    stats = feedback_actions.add_parser("stats", help="answers, votes, corrections and pairs")
    stats.add_argument("--guild", help="only this guild (Discord id)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(handler=stats_command)
    retention = feedback_actions.add_parser(
        "retention",
        help="delete answers nobody voted on or corrected, older than LOOPBOT_PRIVACY_RETENTION_DAYS "
        "(the bot does it daily; this is for cron without it)",
    )
    retention.add_argument("--days", type=int, help="this many days instead of the setting")
    retention.set_defaults(handler=retention_command)
    queue = feedback_actions.add_parser("queue", help="corrections waiting for votes (the curators' queue)")
    queue.add_argument("--guild", help="only this guild (Discord id)")
    queue.add_argument("--limit", type=int, default=20, help="show at most this many (default 20)")
    queue.set_defaults(handler=queue_command)


def _parse_since(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO date/time, e.g. 2026-11-01 or 2026-11-01T12:00"
        ) from None


def export_command(args: argparse.Namespace, settings: Settings) -> int:
    """`loopbot dataset export`: training pairs -> Alpaca JSON (+ an eval file)."""
    from feedback.dataset import export_alpaca, export_preference

    preference = args.format == "preference"
    kinds = ("corrected", "negative") if preference else tuple(args.kinds)
    log = build_feedback_log(settings)
    try:
        # Shared pairs only: a member's personal pairs never leave the log in an export.
        pairs = log.pairs(kinds=kinds, since=args.since, guild_id=args.guild)
    finally:
        log.close()
    export = export_preference if preference else export_alpaca
    report = export(pairs, args.out, args.eval_fraction, seed=args.seed)
    what = "preference records" if preference else "pairs"
    print(f"wrote {report.train} {what} to {report.train_path}")
    if report.eval_path is not None:
        print(f"wrote {report.eval} eval {what} to {report.eval_path} (no question in both files)")
    if report.train + report.eval == 0:
        print(f"the feedback log has no {what} yet: 👍 answers, 👎 them or correct them in Discord.")
    return 0


def import_command(args: argparse.Namespace, settings: Settings) -> int:
    """`loopbot dataset import FILE`: valid rows become pairs, bad rows are listed and skipped."""
    from feedback.dataset import read_dataset
    from feedback.errors import FeedbackError

    read = read_dataset(args.file)
    for problem in read.problems:
        print(f"skipped {args.file}: {problem}", file=sys.stderr)
    if not read.rows:
        raise FeedbackError(
            f"{args.file} has no usable rows: each needs an instruction/question and an output/answer."
        )
    log = build_feedback_log(settings)
    try:
        report = log.import_pairs(
            read.rows, source=args.source or args.file.name, guild_id=args.guild, owner_id=args.member
        )
    finally:
        log.close()
    for problem in report.problems:
        print(f"skipped {args.file}: {problem}", file=sys.stderr)
    where = (
        f"member {args.member}'s own adapter"
        if args.member
        else f"server {args.guild}'s adapter"
        if args.guild
        else "every server's adapter"
    )
    print(
        f"imported {report.imported} pairs from {args.file} for {where} "
        f"({report.duplicates} already present, {report.forgotten} refused as forgotten, "
        f"{len(read.problems) + len(report.problems)} bad rows skipped)"
    )
    if report.imported:
        train = f"--member {args.member}" if args.member else f"--guild {args.guild}" if args.guild else ""
        print(f"they are learned at the next training run: loopbot train {train}".rstrip())
    return 0


def stats_command(args: argparse.Namespace, settings: Settings) -> int:
    """`loopbot feedback stats`: the state of the learning loop's raw material."""
    log = build_feedback_log(settings)
    try:
        stats = log.stats(args.guild)
    finally:
        log.close()
    if args.json:
        print(json.dumps(asdict(stats), indent=2))
        return 0
    scope = f"guild {args.guild}" if args.guild else "all guilds"
    rows = [
        ("answers", stats.answers),
        ("upvotes", stats.upvotes),
        ("downvotes", stats.downvotes),
        ("corrections", stats.corrections),
        ("  pending", stats.pending),
        ("  accepted", stats.accepted),
        *((f"{kind} pairs", number) for kind, number in stats.pairs.items()),
        ("forgotten pairs", stats.forgotten_pairs),
        ("withdrawn pairs", stats.withdrawn_pairs),
        ("retention removed", stats.retention_removed),
    ]
    print(f"feedback log {settings.db_path} ({scope})")
    for label, number in rows:
        print(f"  {label:<18}{number:>8}")
    days = settings.privacy.retention_days
    policy = (
        f"answers nobody voted on or corrected are deleted after {days} days" if days else "answers are kept"
    )
    last = f"; last removal {stats.retention_last_run[:16]} UTC" if stats.retention_last_run else ""
    print(f"retention: {policy} (LOOPBOT_PRIVACY_RETENTION_DAYS){last}")
    return 0


def retention_command(args: argparse.Namespace, settings: Settings) -> int:
    """`loopbot feedback retention`: apply the retention setting now."""
    from feedback.errors import FeedbackError
    from feedback.privacy import apply_retention

    days = settings.privacy.retention_days if args.days is None else args.days
    if days < 0:
        raise FeedbackError(f"--days must be 0 (keep everything) or more, got {days}.")
    if days == 0:
        print("retention is off (0 days): nothing deleted")
        return 0
    log = build_feedback_log(settings)
    try:
        report = apply_retention(log, days)
    finally:
        log.close()
    print(
        f"deleted {report.answers} answer(s) older than {days} days that nobody voted on or corrected "
        f"(before {report.cutoff[:16]} UTC)"
    )
    return 0


def queue_command(args: argparse.Namespace, settings: Settings) -> int:
    """`loopbot feedback queue`: pending corrections, each with the question it corrects."""
    log = build_feedback_log(settings)
    try:
        pending = log.pending_corrections(args.guild, limit=args.limit)
        questions = {c.answer_id: getattr(log.get_answer(c.answer_id), "question", "") for c in pending}
    finally:
        log.close()
    if not pending:
        print("no corrections are waiting for votes")
        return 0
    for correction in pending:
        needed = "?" if correction.votes_needed is None else str(correction.votes_needed)
        print(
            f"#{correction.id} answer {correction.answer_id} by {correction.author_id}, {correction.votes}/{needed} 👍"
        )
        print(f"  Q: {_clip(questions[correction.answer_id])}")
        print(f"  correction: {_clip(correction.text)}")
    return 0


def _clip(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
