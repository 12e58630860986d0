"""As members and admins would use it: each server learns on its own, private stays private through
training and export, forget reaches every file, the bot follows the registry, write paths are bounded."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from adapters.registry import guild_registry

SECRET = "Quillback-4417 is Mochi's microchip number"  # a record only its owner may ever get back


def publish(registry: Any, adapter_dir: Path, pair_ids: list[str] | None = None) -> Any:
    """A real LoRA adapter directory published as the registry's next version."""
    with registry.stage() as stage:
        for item in adapter_dir.iterdir():
            shutil.copy(item, stage.path / item.name)
        return registry.publish(stage, {"base_model": "tiny", "pair_ids": pair_ids or []})


def files_containing(root: Path, text: str) -> list[Path]:
    """Every file under ``root`` whose raw bytes hold ``text`` (UTF-8)."""
    needle = text.encode("utf-8")
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_help_explains_the_gestures(world) -> None:
    shown = await world.bob.slash(world.channel, "help")

    text = shown.response.content
    assert shown.ephemeral and len(text) <= 2000
    assert "Correct answer" in text and "never taken as a correction" in text and "/forget" in text


async def test_each_guild_is_answered_with_its_own_adapter_and_only_its_admins_change_it(
    world, bot_services, make_lora_adapter, tiny_model_dir
) -> None:
    other = world.env.create_guild(name="dogs")
    other_channel = other.create_text_channel("general")
    other.create_role(world.bot.services.settings.discord.admin_role)
    dave_there = other.add_member(world.dave.user)  # an admin in "cats", a plain member in "dogs"
    erin = other.add_member(world.env.create_user("erin"))
    await world.env.settle()
    settings = world.bot.services.settings
    cats, dogs = str(world.guild.id), str(other.id)
    version = publish(guild_registry(settings.adapters_dir, cats), make_lora_adapter(tiny_model_dir, seed=3))

    refused = await dave_there.slash(other_channel, "adapter promote", version="v0001")
    assert "loopbot-admin" in refused.response.content
    assert (await dave_there.slash(other_channel, "train")).response.content.startswith("This command needs")
    await world.dave.slash(world.channel, "adapter promote", version="v0001")

    log = bot_services["feedback_log"]
    await world.alice.send(world.channel, f"{world.bot.user.mention} hello cats?")
    await erin.send(other_channel, f"{world.bot.user.mention} hello dogs?")
    in_cats = log.answer_for_message(str(world.bot_messages()[-1].id))
    in_dogs = log.answer_for_message(str([m for m in other_channel.history() if m.author.bot][-1].id))
    assert in_cats.adapter == version.served_name == f"g{cats}-v0001"
    assert in_dogs.adapter is None  # the other server still answers with the base model
    assert guild_registry(settings.adapters_dir, dogs).active() is None
    status = await erin.slash(other_channel, "adapter status")
    assert "loopbot-" in status.response.content  # a plain member sees nothing of either server


async def test_a_cli_promotion_reaches_the_running_bot_within_seconds(
    world, make_lora_adapter, tiny_model_dir
) -> None:
    guild = str(world.guild.id)
    registry = guild_registry(world.bot.services.settings.adapters_dir, guild)
    version = publish(registry, make_lora_adapter(tiny_model_dir, seed=4))
    adapters = world.bot.services.adapters
    assert adapters.choice_for(guild).top is None

    registry.promote(version.version)  # exactly what `loopbot adapters promote` does, from another process
    await world.env.advance_time(world.bot.services.settings.discord.registry_poll_seconds + 1)

    assert adapters.choice_for(guild).top == version.served_name
    registry.rollback()
    await world.env.advance_time(world.bot.services.settings.discord.registry_poll_seconds + 1)
    assert adapters.choice_for(guild).top is None


async def test_a_corrupt_active_adapter_serves_the_base_model_with_a_warning(
    world, bot_services, make_lora_adapter, tiny_model_dir, caplog
) -> None:
    guild = str(world.guild.id)
    registry = guild_registry(world.bot.services.settings.adapters_dir, guild)
    version = publish(registry, make_lora_adapter(tiny_model_dir, seed=5))
    registry.promote(version.version)
    (version.path / "adapter_model.safetensors").write_bytes(b"corrupt")

    with caplog.at_level(logging.WARNING):
        await world.alice.send(world.channel, f"{world.bot.user.mention} are you there?")

    record = bot_services["feedback_log"].answer_for_message(str(world.bot_messages()[-1].id))
    assert record is not None and record.adapter is None
    assert "serving the bare base model" in caplog.text


async def test_private_feedback_never_reaches_shared_data_and_forget_reaches_every_file(
    world, bot_services, make_lora_adapter, tiny_model_dir, tmp_path, monkeypatch
) -> None:
    from bot.cli import main

    log, settings = bot_services["feedback_log"], world.bot.services.settings
    guild, alice = str(world.guild.id), str(world.alice.id)
    # Alice keeps a record, asks about it (answered in a DM) and corrects it there.
    await world.alice.slash(world.channel, "remember", text=SECRET)
    await world.alice.send(world.channel, f"{world.bot.user.mention} what is Mochi's microchip number?")
    dm = world.alice.user.dm_channel
    answer = [m for m in dm.history() if m.author.id == world.bot.user.id][-1]
    record = log.answer_for_message(str(answer.id))
    shown = await world.alice.user.click(answer, custom_id=f"loopbot:correct:{record.id}")
    await world.alice.user.submit_modal(shown, {"correction": f"{SECRET}, registered in 2024."})
    # Bob's public answer gets a 👍: a shared pair.
    await world.bob.send(world.channel, f"{world.bot.user.mention} how often should a cat eat?")
    await world.carol.react(world.bot_messages()[-1], "👍")

    assert record.private and SECRET in record.context
    shared = log.pairs(guild_id=guild)
    assert shared and not any(SECRET in p.input or SECRET in p.output for p in shared)
    assert {p.kind for p in log.pairs(owner_id=alice)} == {"corrected"}
    export = tmp_path / "export.json"
    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(settings.data_dir))
    assert main(["dataset", "export", "--out", str(export), "--guild", guild]) == 0
    assert "how often should a cat eat" in export.read_text() and SECRET not in export.read_text()

    # A version trained on Alice's pairs (as a run before this fix would have been) is active.
    registry = guild_registry(settings.adapters_dir, guild)
    her_pairs = [str(p.id) for p in log.pairs(owner_id=alice)]
    old = publish(registry, make_lora_adapter(tiny_model_dir, seed=6), pair_ids=her_pairs)
    (old.path / "dataset.jsonl").write_text(f'{{"completion": "{SECRET}"}}\n', encoding="utf-8")
    (old.path / "gate_report.csv").write_text(f"question,expected\nq,{SECRET}\n", encoding="utf-8")
    (old.path / "questions.json").write_text(f'{{"questions": ["{SECRET}?"]}}', encoding="utf-8")  # its scope
    # An adapter trained on her pairs may say them in its answers to the general questions, too.
    (old.path / "regression_answers.json").write_text(f'{{"answers": [["q", "", "{SECRET}"]]}}', "utf-8")
    registry.promote(old.version)
    world.bot.services.adapters.sync(guild)

    assert files_containing(settings.data_dir, "Quillback-4417")  # the search can find it...
    prompt = await world.alice.slash(world.channel, "forget")
    done = await world.alice.click(prompt.response.message, label="Forget everything")

    assert "deleted 2 personal record(s)" in done.response.content  # the note and her private correction
    assert files_containing(settings.data_dir, "Quillback-4417") == []  # ...and finds nothing after
    assert registry.active() is None and world.bot.services.adapters.choice_for(guild).top is None
    refused = await world.dave.slash(world.channel, "adapter promote", version=old.version)
    assert refused.response.content.startswith("Nothing changed") and "forgotten" in refused.response.content


async def test_write_paths_are_bounded_and_say_what_to_do(world, bot_settings) -> None:
    limit = bot_settings.discord.write_limit_per_minute
    for n in range(limit):
        assert (
            "Remembered"
            in (await world.bob.slash(world.channel, "remember", text=f"note {n}")).response.content
        )
    refused = await world.bob.slash(world.channel, "remember", text="one too many")
    assert refused.ephemeral and "Try again in" in refused.response.content

    long = "why " * (bot_settings.discord.max_question_chars // 4 + 1)
    await world.alice.send(world.channel, f"{world.bot.user.mention} {long}")
    assert "Please shorten it" in world.bot_messages()[-1].content


@pytest.mark.parametrize("mention", ["@everyone", "<@&123>"])
async def test_answers_never_ping_anyone(world, mention) -> None:
    await world.alice.send(world.channel, f"{world.bot.user.mention} say {mention} please")

    message = world.bot_messages()[-1]
    assert not message.mention_everyone and message.role_mentions == [] and message.mentions == []


async def test_a_members_own_adapter_serves_only_their_private_answers_and_forget_removes_it(
    world, bot_services, make_lora_adapter, tiny_model_dir
) -> None:
    from adapters.registry import member_registry

    log, settings, runtime = (
        bot_services["feedback_log"],
        world.bot.services.settings,
        bot_services["runtime"],
    )
    guild, alice = str(world.guild.id), str(world.alice.id)
    shared = guild_registry(settings.adapters_dir, guild)
    shared.promote(publish(shared, make_lora_adapter(tiny_model_dir, seed=7)).version)
    own = member_registry(settings.adapters_dir, alice)
    own.promote(publish(own, make_lora_adapter(tiny_model_dir, seed=8)).version)
    guild_name, own_name = f"g{guild}-v0001", f"m{alice}-v0001"

    async def adapter_of(member: Any, private: bool) -> str | None:
        result = await member.slash(world.channel, "ask", question="what does Mochi eat?", private=private)
        record = log.answer_for_message(str(result.response.id))
        return record.adapter

    assert await adapter_of(world.alice, private=True) == f"{guild_name}+{own_name}"  # stacked, hers alone
    assert await adapter_of(world.alice, private=False) == guild_name  # public: never her own adapter
    assert await adapter_of(world.bob, private=True) == guild_name  # another member: never hers
    await world.alice.user.send_dm("what does Mochi eat?")
    dm_answer = [m for m in world.alice.user.dm_channel.history() if m.author.id == world.bot.user.id][-1]
    assert log.answer_for_message(str(dm_answer.id)).adapter == own_name  # a DM has no server adapter

    prompt = await world.alice.slash(world.channel, "forget")
    done = await world.alice.click(prompt.response.message, label="Forget everything")
    assert "the member's own adapter (1 version(s))" in done.response.content
    assert not own.root.exists() and own_name not in runtime.adapters
    await world.env.advance_time(61)  # past the 3-questions-a-minute limit of these tests
    assert await adapter_of(world.alice, private=True) == guild_name
