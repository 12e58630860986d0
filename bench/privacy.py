"""Benchmark `/privacy`: the summary and the download with 10,000 answers in the log.

    python bench/privacy.py [--answers 10000] [--members 10] [--records 200] [--repeats 5]

Builds a temp data dir with the real parts (embedded Chroma with the packaged embedder and the
lexical index, the SQLite feedback log, a guild registry with versions trained on the member's pairs):
``--answers`` answers spread over ``--members`` members, a third of them voted on, one in twenty
corrected (by each member in turn), and ``--records`` personal records of the member measured. Times the use cases
(``privacy_report``: what `/privacy` shows; ``export_member`` + ``export_file``: the download), then
the same through the real cog in simcord (the slash command and the button, as a member uses them).
Checks that the export holds the member's rows and none of another member's words. Writes
``bench/results/privacy.json``. The goal (issue 28): `/privacy` answers in under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402

MARK = "Privmark"  # in every text of the measured member's: the export must hold it, others' must not


def fill(
    log: Any, kb: Any, adapters_dir: Path, guild: str, members: list[str], answers: int, records: int
) -> dict[str, Any]:
    """The log, the member's records, and two adapter versions trained on the member's pairs."""
    from adapters.registry import guild_registry
    from ingest import text_chunks

    target = members[0]
    started = time.perf_counter()
    with log.db.transaction():  # one commit: the fill is not what is measured
        for n in range(answers):
            asker = members[n % len(members)]
            word = MARK if asker == target else f"Other{asker}"
            answer_id = log.record_answer(
                guild_id=guild if n % 9 else "", channel_id="c", user_id=asker,
                question=f"{word} question {n}: how often should a cat eat?", context=f"[1] post {n}",
                chunk_ids=[f"c{n}"], prompt="p", prompt_version="t", adapter=None, answer=f"answer {n}",
                message_ids=[str(10**9 + n)],
            )  # fmt: skip
            if n % 3 == 0:
                log.set_vote(answer_id, members[(n + 1) % len(members)], 1, True)
            if n % 7 == 0:
                log.set_vote(answer_id, members[(n + 2) % len(members)], -1, True)
            if n % 20 == 7:  # another member's answer, corrected by each member in turn
                author = members[(n // 20) % len(members)]
                text = f"{MARK if author == target else 'Other'} fix {n}"
                log.add_correction(answer_id, author_id=author, text=text, message_id=None, trusted=True)
    fill_log = time.perf_counter() - started
    chunks = []
    for n in range(records):
        text = f"{MARK} note {n}: Mochi sneezed {n % 7} times on day {n}."
        chunks += text_chunks(text, source=f"note-{n}", scope="personal", guild_id=guild, owner_id=target)
    kb.add(chunks)
    theirs = [str(p.id) for p in log.pairs(guild_id=guild) if p.user_id == target or p.author_id == target]
    registry = guild_registry(adapters_dir, guild)
    for half in (theirs[: len(theirs) // 2], theirs):
        with registry.stage() as stage:
            (stage.path / "adapter_model.safetensors").write_bytes(b"weights")
            version = registry.publish(stage, {"base_model": "b", "pair_ids": half})
    registry.promote(version.version)
    stats = log.stats()
    return {"fill_log_s": round(fill_log, 1), "answers": stats.answers, "votes": stats.upvotes + stats.downvotes,
            "corrections": stats.corrections, "pairs": sum(stats.pairs.values()), "records": records}  # fmt: skip


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    """Median milliseconds of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    from simcord import Env

    from bot.discord_app import create_bot
    from bot.settings import Settings
    from bot.usecases.privacy import export_file, export_member, privacy_report
    from bot.wiring import build_feedback_log, build_knowledge_base
    from knowledge.embeddings import load_embeddings

    data = Path(tempfile.mkdtemp(prefix="loopbot-privacy-"))
    settings = Settings(data_dir=data)
    embeddings = load_embeddings("")
    kb = build_knowledge_base(settings, embeddings)
    log = build_feedback_log(settings)
    bot = create_bot(
        settings, feedback_log=log, knowledge_base=kb, answer_service=object(), personal_probe=None
    )
    env = Env(bot, settle_timeout=120.0)
    await env.start()
    try:
        guild = env.create_guild(name="cats")
        channel = guild.create_text_channel("general")
        users = [guild.add_member(env.create_user(f"member{n}")) for n in range(args.members)]
        await env.settle()
        members = [str(u.id) for u in users]
        target = members[0]
        filled = fill(log, kb, settings.adapters_dir, str(guild.id), members, args.answers, args.records)

        def report() -> Any:
            return privacy_report(kb, log, target, str(guild.id), adapters_dir=settings.adapters_dir,
                                  retention_days=settings.privacy.retention_days)  # fmt: skip

        def download() -> tuple[str, bytes]:
            return export_file(export_member(kb, log, target, adapters_dir=settings.adapters_dir))

        report_ms, shown = timed(report, args.repeats)
        export_ms, (name, payload) = timed(download, args.repeats)
        exported = json.loads(payload)
        other = export_member(kb, log, members[1], adapters_dir=settings.adapters_dir)

        slash_ms: list[float] = []
        click_ms: list[float] = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = await users[0].slash(channel, "privacy")
            slash_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            got = await users[0].click(result.response.message, label="Download my data")
            click_ms.append((time.perf_counter() - started) * 1000)
        assert "In this server:" in result.response.content, result.response.content
        (attachment,) = got.response.attachments
        sent = json.loads(await attachment.read())  # the same rows (plus the note /privacy counted as read)
        assert len(sent["answers"]) == len(exported["answers"]) and sent["privacy_notes_shown"]
    finally:
        await env.shutdown()
        await bot.close()  # closes the log and the knowledge base

    checks = {
        "export_answers": len(exported["answers"]),
        "export_votes": len(exported["votes"]),
        "export_corrections": len(exported["corrections"]),
        "export_pairs": len(exported["pairs"]),
        "export_records": len(exported["personal_records"]),
        "export_adapter_versions": len(exported["adapter_versions"]),
        "others_words_in_export": sum(payload.decode("utf-8").count(f"Other{m}") for m in members[1:]),
        "members_words_in_another_export": json.dumps(other).count(MARK),
    }
    assert checks["others_words_in_export"] == 0 and checks["members_words_in_another_export"] == 0
    assert checks["export_answers"] == args.answers // args.members
    write(
        "privacy",
        {
            "what": "/privacy with a big log: the summary and the download, use case and through the bot "
            "(simcord, the real cog)",
            "setup": {**filled, "members": args.members, "repeats": args.repeats},
            "use_case_ms": {"privacy_report": report_ms, "export_member_and_file": export_ms},
            "through_the_bot_ms": {
                "slash_privacy_median": round(statistics.median(slash_ms), 1),
                "download_button_median": round(statistics.median(click_ms), 1),
            },
            "export_bytes": len(payload),
            "export_file": name,
            "summary_chars": len(shown.text()),
            "checks": checks,
            "goal": "/privacy answers in < 1 s with 10,000 answers in the log (issue 28)",
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
