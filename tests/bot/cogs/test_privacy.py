"""Members in control, as they would use it: the one-time note, ``/privacy`` and its download, learning
off (and on again), a server's learning switch, and retention of answers nobody voted on."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.registry import guild_registry

# tests/bot is on sys.path (pytest prepends a test file's folder): the same helpers as the forget tests
from tests.bot.cogs.test_guilds_and_privacy import files_containing, publish

NOTE = "About your data"


async def ask(world: Any, member: Any, question: str) -> Any:
    """``member`` asks by mention; the bot's answer message."""
    await member.send(world.channel, f"{world.bot.user.mention} {question}")
    return world.bot_messages()[-1]


async def correct(world: Any, log: Any, member: Any, answer: Any, text: str) -> Any:
    """``member`` presses ✏️ under ``answer`` and submits ``text``."""
    record = log.answer_for_message(str(answer.id))
    shown = await member.click(answer, custom_id=f"loopbot:correct:{record.id}")
    return await member.submit_modal(shown, {"correction": text})


async def download(member: Any, channel: Any) -> tuple[Any, bytes]:
    """``member`` runs ``/privacy`` and presses "Download my data": (the summary, the file's bytes)."""
    summary = await member.slash(channel, "privacy")
    got = await member.click(summary.response.message, label="Download my data")
    (attachment,) = got.response.attachments
    assert got.ephemeral and attachment.filename.endswith(".json")
    return summary, await attachment.read()


def all_pairs(log: Any, guild: str) -> list[Any]:
    return log.pairs(kinds=("positive", "corrected", "taught", "negative"), guild_id=guild)


async def test_a_newcomer_is_told_once_what_is_kept_and_learned(world) -> None:
    erin = world.guild.add_member(world.env.create_user("erin"))
    fay = world.guild.add_member(world.env.create_user("fay"))
    gus = world.guild.add_member(world.env.create_user("gus"))
    await world.env.settle()

    first = await erin.slash(world.channel, "remember", text="Mochi likes tuna.")
    again = await erin.slash(world.channel, "remember", text="Mochi hates baths.")
    await fay.send(world.channel, f"{world.bot.user.mention} how often should a cat eat?")
    await fay.send(world.channel, f"{world.bot.user.mention} and a kitten?")
    read_help = await gus.slash(world.channel, "help")
    after_help = await gus.slash(world.channel, "remember", text="Rex is a dog.")

    assert "Remembered" in first.response.content
    (note,) = [m for m in first.followups if NOTE in m.content]
    assert note.ephemeral and "/privacy" in note.content and "30 days" in note.content
    assert not any(NOTE in m.content for m in again.followups)
    # A mention cannot be answered ephemerally: the note goes to a DM, once, and nobody else sees it.
    notes = [
        m for m in fay.user.dm_channel.history() if m.author.id == world.bot.user.id and NOTE in m.content
    ]
    assert len(notes) == 1 and "training pairs" in notes[0].content
    assert not any(NOTE in m.content for m in world.channel.history())
    # /help says it too, so it counts as the note.
    assert "/privacy" in read_help.response.content and "go after 30 days" in read_help.response.content
    assert not any(NOTE in m.content for m in [*read_help.followups, *after_help.followups])


async def test_privacy_shows_and_downloads_every_row_about_the_member_and_nothing_of_anyone_else(
    world, bot_services
) -> None:
    log, settings = bot_services["feedback_log"], world.bot.services.settings
    alice = str(world.alice.id)
    hers = await ask(world, world.alice, "Alicemark how often should a cat eat?")
    his = await ask(world, world.bob, "Bobmark how often should a dog eat?")
    await world.bob.react(hers, "👍")
    await world.alice.react(his, "👍")
    await world.carol.react(his, "👍")
    await correct(world, log, world.alice, his, "Alicemark: twice a day.")  # a stranger's: pending
    await world.carol.react(world.bot_messages()[-1], "👍")  # a curator's 👍 accepts it: a community post
    await correct(world, log, world.bob, hers, "Bobmark: three times.")  # Bob's words on her answer
    await world.alice.slash(world.channel, "remember", text="Alicemark: Mochi's chip is 4417.")
    await world.bob.slash(world.channel, "remember", text="Bobmark: Rex's chip is 9921.")

    summary, raw = await download(world.alice, world.channel)
    text = summary.response.content
    assert summary.ephemeral and "In this server: 1 personal record · 1 community post you wrote" in text
    assert "1 answer to your questions · 1 vote · 1 correction · 2 shared training pairs" in text
    assert "Bobmark" not in text and "Bobmark" not in raw.decode("utf-8")
    data = json.loads(raw)

    # A search of the data dir for Alice: every row of the log that names her or holds her words ...
    conn = sqlite3.connect(settings.db_path)
    conn.row_factory = sqlite3.Row
    found: dict[str, int] = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        for row in conn.execute(f"SELECT * FROM {table}"):
            if any(value == alice or "Alicemark" in str(value) for value in tuple(row)):
                found[table] = found.get(table, 0) + 1
    conn.close()
    # ... is in her export, table by table.
    sections = {
        "answers": "answers",
        "votes": "votes",
        "corrections": "corrections",
        "pairs": "pairs",
        "member_notices": "privacy_notes_shown",
    }
    assert set(found) <= set(sections), f"rows about her the export does not cover: {found}"
    assert {table: len(data[sections[table]]) for table in found} == found
    assert found["pairs"] == 2 and found["votes"] == 1
    # Her records and her post in the knowledge base, and the files that hold her words.
    kb = bot_services["knowledge_base"]
    assert {c.id for c in kb.member_chunks(alice)} == {
        item["id"] for item in [*data["personal_records"], *data["community_posts"]]
    }
    assert len(data["personal_records"]) == 1 and len(data["community_posts"]) == 1
    for path in files_containing(settings.data_dir, "Alicemark"):
        assert path.name.startswith("loopbot.db") or settings.chroma_dir in path.parents, path
    # Bob's download holds none of her words either.
    _, bobs = await download(world.bob, world.channel)
    assert "Alicemark" not in bobs.decode("utf-8") and json.loads(bobs)["member"] == str(world.bob.id)


async def test_learning_off_keeps_answering_learns_nothing_and_reaches_the_served_adapter(
    world, bot_services, make_lora_adapter, tiny_model_dir, tmp_path: Path, monkeypatch
) -> None:
    from bot.cli import main

    log, settings, adapters = (
        bot_services["feedback_log"],
        world.bot.services.settings,
        world.bot.services.adapters,
    )
    guild = str(world.guild.id)
    first = await ask(world, world.alice, "Learnmark how often should a cat eat?")
    await world.carol.react(first, "👍")
    (pair,) = all_pairs(log, guild)
    registry = guild_registry(settings.adapters_dir, guild)
    trained = publish(registry, make_lora_adapter(tiny_model_dir, seed=11), pair_ids=[str(pair.id)])
    registry.promote(trained.version)
    assert adapters.sync(guild) == trained.served_name

    off = await world.alice.slash(world.channel, "privacy", learning="off")

    assert off.ephemeral and "Learning from you is **off**" in off.response.content
    assert "1 pair(s) that held your data left" in off.response.content
    assert (
        all_pairs(log, guild) == [] and registry.active() is None and adapters.choice_for(guild).top is None
    )
    # She is still answered; her questions, votes and corrections make no pair.
    second = await ask(world, world.alice, "Learnmark and a kitten?")
    assert log.answer_for_message(str(second.id)) is not None
    await world.bob.react(second, "👍")
    bobs = await ask(world, world.bob, "how often should a dog eat?")
    await world.alice.react(bobs, "👍")
    await correct(world, log, world.alice, second, "Learnmark: three small meals.")  # hers: accepted at once
    assert all_pairs(log, guild) == []
    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(settings.data_dir))
    export = tmp_path / "export.json"
    assert main(["dataset", "export", "--out", str(export), "--guild", guild]) == 0
    assert "Learnmark" not in export.read_text(encoding="utf-8")
    # The trained version can never be served again.
    refused = await world.dave.slash(world.channel, "adapter promote", version=trained.version)
    assert refused.response.content.startswith("Nothing changed") and "not to be learned from" in (
        refused.response.content
    )
    shown = await world.alice.slash(world.channel, "privacy")
    assert "Learning from you: **off**" in shown.response.content

    on = await world.alice.slash(world.channel, "privacy", learning="on")
    await world.carol.react(second, "👍")  # a vote now, on a question asked while off: still nothing
    third = await ask(world, world.alice, "Learnmark again?")
    await world.carol.react(third, "👍")

    assert "**on** again" in on.response.content
    assert [p.instruction for p in all_pairs(log, guild)] == ["Learnmark again?"]


async def test_the_server_switch_is_for_admins_and_stops_pairs_and_training(world, bot_services) -> None:
    log, guild = bot_services["feedback_log"], str(world.guild.id)

    refused = await world.bob.slash(world.channel, "privacy", server_learning="off")
    in_dm = await world.dave.user.slash("privacy", server_learning="off")
    off = await world.dave.slash(world.channel, "privacy", server_learning="off")
    shown_help = await world.bob.slash(world.channel, "help")
    status = await world.carol.slash(world.channel, "adapter status")
    answer = await ask(world, world.alice, "how often should a cat eat?")
    await world.carol.react(answer, "👍")
    trained = await world.dave.slash(world.channel, "train")

    assert refused.ephemeral and "needs the `loopbot-admin` role" in refused.response.content
    assert in_dm.ephemeral and "a server's setting" in in_dm.response.content
    assert "This server's learning is **off**" in off.response.content
    assert "Learning in this server is **off**" in shown_help.response.content
    assert "Learning in this server: **off**" in status.response.content
    assert all_pairs(log, guild) == []
    result = (trained.followups[-1] if trained.followups else trained.response).content
    assert result.startswith("nothing trained: learning is off in server")

    on = await world.dave.slash(world.channel, "privacy", server_learning="on")
    later = await ask(world, world.alice, "and a kitten?")
    await world.carol.react(later, "👍")
    assert "**on** again" in on.response.content
    assert [p.instruction for p in all_pairs(log, guild)] == ["and a kitten?"]


async def test_retention_removes_only_answers_nobody_voted_on_or_corrected(
    world, bot_services, monkeypatch, capsys
) -> None:
    from bot.cli import main

    log, settings = bot_services["feedback_log"], world.bot.services.settings
    unvoted = await ask(world, world.alice, "Oldmark how often should a cat eat?")
    voted = await ask(world, world.bob, "how often should a dog eat?")
    await world.carol.react(voted, "👎")
    corrected = await ask(world, world.alice, "how often should a kitten eat?")
    await correct(world, log, world.alice, corrected, "Four times a day.")
    gone = log.answer_for_message(str(unvoted.id)).id
    past = (datetime.now(UTC) - timedelta(days=settings.privacy.retention_days + 1)).isoformat()
    with log.db.transaction() as conn:
        conn.execute("UPDATE answers SET created_at = ?", (past,))

    await world.bot.get_cog("PrivacyCog").retention()

    assert log.get_answer(gone) is None
    assert log.answer_for_message(str(voted.id)) is not None
    assert log.answer_for_message(str(corrected.id)) is not None
    assert files_containing(settings.data_dir, "Oldmark") == []
    pencil = await world.bob.click(unvoted, custom_id=f"loopbot:correct:{gone}")
    assert "no longer in my log" in pencil.response.content
    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(settings.data_dir))
    assert main(["feedback", "stats"]) == 0
    assert "retention removed        1" in capsys.readouterr().out


async def test_a_member_with_nothing_held_is_told_so(world) -> None:
    hal = world.env.create_user("hal")

    shown = await hal.slash("privacy")
    got = await hal.click(shown.response.message, label="Download my data")

    assert shown.ephemeral and "In direct messages: nothing" in shown.response.content
    assert "In this server" not in shown.response.content
    assert got.response.attachments == [] and "holds nothing about member" in got.response.content
