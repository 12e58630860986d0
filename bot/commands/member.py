"""CLI area ``member``: what loopbot holds about one member (what ``/privacy`` shows them).

loopbot member show --user ID [--guild ID]
loopbot member export --user ID [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.settings import Settings
    from feedback.log import FeedbackLog
    from knowledge.store import KnowledgeBase


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``member show`` and ``member export``."""
    member = subparsers.add_parser("member", help="what loopbot holds about a member (their /privacy)")
    actions = member.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="counts of a member's records, answers, votes, pairs, adapters")
    show.add_argument("--user", required=True, help="the member's Discord user id")
    show.add_argument("--guild", help="also show one server's counts (Discord server id)")
    show.set_defaults(handler=show_command)
    export = actions.add_parser("export", help="everything the data dir holds about a member, as JSON")
    export.add_argument("--user", required=True, help="the member's Discord user id")
    export.add_argument("--out", type=Path, help="write the JSON here (default: print it)")
    export.set_defaults(handler=export_command)


@contextlib.contextmanager
def _parts(settings: Settings) -> Iterator[tuple[KnowledgeBase, FeedbackLog]]:
    """The knowledge base (without loading the embedder: nothing is searched) and the log."""
    from bot.commands.kb import open_kb_without_model
    from bot.wiring import build_feedback_log

    kb = open_kb_without_model(settings)
    try:
        log = build_feedback_log(settings)
        try:
            yield kb, log
        finally:
            log.close()
    finally:
        kb.close()


def show_command(args: argparse.Namespace, settings: Settings) -> int:
    """Print what ``/privacy`` would show the member (everywhere, and in ``--guild`` if given)."""
    from bot.usecases.privacy import check_member_id, export_member, privacy_report

    user = check_member_id(args.user)
    with _parts(settings) as (kb, log):
        export_member(kb, log, user, adapters_dir=settings.adapters_dir)  # a clear error for an unknown id
        report = privacy_report(
            kb,
            log,
            user,
            args.guild,
            adapters_dir=settings.adapters_dir,
            retention_days=settings.privacy.retention_days,
        )
    print(f"member {user} in {settings.data_dir}")
    print(report.text().replace("**", "").replace("`", ""))
    return 0


def export_command(args: argparse.Namespace, settings: Settings) -> int:
    """Write (or print) the member's export: the JSON ``/privacy`` sends them."""
    from bot.usecases.privacy import check_member_id, export_json, export_member

    user = check_member_id(args.user)
    with _parts(settings) as (kb, log):
        data = export_member(kb, log, user, adapters_dir=settings.adapters_dir)
    payload = export_json(data)
    if args.out is None:
        sys.stdout.buffer.write(payload + b"\n")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(payload)
    kinds = ("answers", "votes", "corrections", "pairs", "personal_records")
    counts = ", ".join(f"{len(data[kind])} {kind.replace('_', ' ')}" for kind in kinds)
    print(f"wrote member {user}'s data to {args.out} ({counts})", file=sys.stderr)
    return 0
