"""CLI area ``kb``: fill, inspect and prune the knowledge base; forget a member.

loopbot ingest PATH... --guild ID [--scope community | --scope personal --owner ID]
loopbot kb stats [--json]
loopbot kb delete --source NAME [--guild ID] [--owner ID]
loopbot forget --user ID
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.settings import Settings
    from knowledge.store import KnowledgeBase


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ingest``, ``kb stats``, ``kb delete`` and ``forget``."""
    ingest = subparsers.add_parser("ingest", help="add files or folders to the knowledge base")
    ingest.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="files or folders (searched recursively)"
    )
    ingest.add_argument(
        "--scope", choices=["community", "personal"], default="community", help="who may see it"
    )
    ingest.add_argument("--guild", required=True, help="Discord guild id the knowledge belongs to")
    ingest.add_argument("--owner", help="member's Discord user id (required with --scope personal)")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bars")
    ingest.set_defaults(handler=ingest_command)

    kb = subparsers.add_parser("kb", help="inspect or prune the knowledge base")
    actions = kb.add_subparsers(dest="action", required=True, metavar="ACTION")
    stats = actions.add_parser("stats", help="chunks per guild, personal records, embedder")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=stats_command)
    delete = actions.add_parser("delete", help="delete every chunk of one source (file name)")
    delete.add_argument("--source", required=True, help="source name as shown by ingest (e.g. faq.md)")
    delete.add_argument("--guild", help="only in this guild (default: every guild)")
    delete.add_argument(
        "--owner", help="delete from this member's personal records instead of community posts"
    )
    delete.set_defaults(handler=delete_command)

    forget = subparsers.add_parser("forget", help="delete a member's personal records and training pairs")
    forget.add_argument("--user", required=True, help="member's Discord user id")
    forget.set_defaults(handler=forget_command)


def _open_kb(settings: Settings, *, claim: bool = False) -> KnowledgeBase:
    from bot.wiring import build_knowledge_base

    return build_knowledge_base(settings, claim=claim)


def ingest_command(args: argparse.Namespace, settings: Settings) -> int:
    """Read, chunk, embed and store the given paths; print a summary and every problem."""
    from bot.usecases.knowledge import ingest_limits
    from ingest import load_files, store_report

    limits = ingest_limits(settings.kb)
    progress = not args.no_progress
    # Read first: a bad path or too many files fails before the embedder loads or the store is locked.
    report = load_files(
        args.paths,
        scope=args.scope,
        guild_id=args.guild,
        owner_id=args.owner,
        limits=limits,
        progress=progress,
    )
    if report.chunks:
        kb = _open_kb(settings, claim=True)
        try:
            store_report(kb, report, progress=progress)
        finally:
            kb.close()
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"ingested {report.summary()}")
    return 0 if report.files or not report.problems else 1


def _stats(settings: Settings) -> dict[str, Any]:
    if not settings.kb.chroma_host and not settings.chroma_dir.exists():
        return {
            "embedder": settings.kb.embedding_model or "all-MiniLM-L6-v2",
            "community_chunks": 0,
            "community_by_guild": {},
            "personal_records": 0,
            "members_with_records": 0,
            "lexical_rows": 0,
        }
    kb = open_kb_without_model(settings)
    try:
        return kb.stats()
    finally:
        kb.close()


def stats_command(args: argparse.Namespace, settings: Settings) -> int:
    """Print the knowledge base's counts."""
    stats = _stats(settings)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False))
        return 0
    print(f"embedder: {stats['embedder']}")
    print(f"community chunks: {stats['community_chunks']}")
    for guild, count in sorted(stats["community_by_guild"].items()):
        print(f"  guild {guild}: {count}")
    print(f"personal records: {stats['personal_records']} ({stats['members_with_records']} member(s))")
    return 0


def delete_command(args: argparse.Namespace, settings: Settings) -> int:
    """Delete one source's chunks (community posts, or one member's records with ``--owner``)."""
    kb = open_kb_without_model(settings)
    try:
        removed = kb.delete_source(args.source, guild_id=args.guild, owner_id=args.owner)
    finally:
        kb.close()
    print(f"deleted {removed} chunk(s) of {args.source}")
    return 0 if removed else 1


def open_kb_without_model(settings: Settings) -> KnowledgeBase:
    """The store for maintenance that never embeds (delete, forget): no model load, same embedder tag."""
    from bot.wiring import build_knowledge_base
    from knowledge.embeddings import NoEmbeddings

    return build_knowledge_base(settings, embeddings=NoEmbeddings(settings.kb.embedding_model))


def forget_command(args: argparse.Namespace, settings: Settings) -> int:
    """Delete a member's personal records in every guild, then their feedback and training pairs."""
    from bot.usecases.knowledge import forget_member
    from bot.wiring import build_feedback_log

    kb = open_kb_without_model(settings)
    try:
        log = build_feedback_log(settings)
        try:
            summary = forget_member(kb, log, args.user, adapters_dir=settings.adapters_dir)
        finally:
            log.close()
    finally:
        kb.close()
    print(f"{summary.sentence()}; the next adapter is trained without them")
    for guild, version in summary.replaced.items():
        now = f"{version}" if version else "the base model"
        print(
            f"server {guild or '(before per-server adapters)'}: its adapter held those pairs; {now} is active now"
        )
    return 0
