"""CLI area ``ask``: ``loopbot ask QUESTION [--json] [--user ID] [--guild ID]``.

Answers through the knowledge chain (``knowledge.chain.AnswerService``): the guild's community
posts and the asker's own records ground the answer; without ``--guild`` nothing is retrieved.
JSON shape: ``{"answer", "sources": [{"id", "source", "scope", "text"}], "adapter"}``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bot.settings import Settings
from knowledge.types import citation


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ask``."""
    ask = subparsers.add_parser("ask", help="answer one question from the command line")
    ask.add_argument("question", help="the question")
    ask.add_argument("--json", action="store_true", help='print {"answer", "sources", "adapter"} as JSON')
    ask.add_argument("--user", default=None, help="asker's Discord user id (personal records)")
    ask.add_argument("--guild", default=None, help="Discord guild id (community posts)")
    ask.set_defaults(handler=ask_handler)


def answer_question(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Answer ``args.question`` through the retrieval chain (the guild's posts and the asker's records).

    Returns ``{"answer": str, "sources": [{"id", "source", "scope", "text"}], "adapter": str | None}``.
    """
    from bot.wiring import build_answer_service, build_knowledge_base, build_runtime

    # First: a missing model fails before the embedder loads. The guild's own adapter answers.
    runtime = build_runtime(settings, guild_id=args.guild)
    try:
        kb = build_knowledge_base(settings)
        try:
            service = build_answer_service(settings, kb=kb, runtime=runtime)
            answer = service.answer(args.question, user_id=args.user, guild_id=args.guild)
        finally:
            kb.close()
    finally:
        runtime.close()
    return answer.to_json()


def ask_handler(args: argparse.Namespace, settings: Settings) -> int:
    """Print the answer (plain text, or JSON with ``--json``)."""
    result = answer_question(args, settings)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(result["answer"])
        for number, source in enumerate(result["sources"], 1):
            where = citation(source["source"], source.get("section"), source.get("page"))
            print(f"[{number}] {where} ({source['scope']}): {source['text'][:200]}")
    return 0
