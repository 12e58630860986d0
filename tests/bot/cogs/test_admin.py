"""Admin commands: roles are enforced with a reason; stats, adapter status, promote / rollback, /train."""

from __future__ import annotations

import shutil
from typing import Any

import pytest


def publish_adapter(registry: Any, adapter_dir: Any) -> Any:
    """Put a real LoRA adapter directory into the registry as a new version."""
    with registry.stage() as stage:
        for item in adapter_dir.iterdir():
            shutil.copy(item, stage.path / item.name)
        return registry.publish(stage, {"base_model": "tiny", "pair_count": 3})


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("train", {}),
        ("adapter promote", {"version": "v0001"}),
        ("adapter rollback", {}),
        ("feedback stats", {}),
    ],
)
async def test_members_without_the_role_are_refused_with_the_reason(world, command, options) -> None:
    result = await world.bob.slash(world.channel, command, **options)

    assert (
        result.ephemeral and "role" in result.response.content and "loopbot-admin" in result.response.content
    )


async def test_curators_see_stats_and_status_but_cannot_change_the_adapter(world, bot_services) -> None:
    await world.alice.send(world.channel, f"{world.bot.user.mention} hello?")
    await world.bob.react(world.bot_messages()[-1], "👍")

    stats = await world.carol.slash(world.channel, "feedback stats")
    status = await world.carol.slash(world.channel, "adapter status")
    promote = await world.carol.slash(world.channel, "adapter promote", version="v0001")

    assert stats.ephemeral and "answers 1" in stats.response.content and "👍 1" in stats.response.content
    assert "none (base model)" in status.response.content
    assert "corrected on" not in status.response.content  # no adapter: nothing routed
    assert "loopbot-admin" in promote.response.content


async def test_admin_promotes_and_rolls_back_a_real_adapter(
    world, bot_services, make_lora_adapter, tiny_model_dir
) -> None:
    from adapters.registry import guild_registry

    guild = str(world.guild.id)
    registry = guild_registry(world.bot.services.settings.adapters_dir, guild)
    published = publish_adapter(registry, make_lora_adapter(tiny_model_dir, seed=1))
    version, served = published.version, published.served_name
    adapters = world.bot.services.adapters

    promoted = await world.dave.slash(world.channel, "adapter promote", version=version)
    assert version in promoted.response.content
    assert (
        adapters.choice_for(guild).top == served == f"g{guild}-{version}"
        and registry.active().version == version
    )
    # The next answer is generated, and logged, with that adapter.
    await world.alice.send(world.channel, f"{world.bot.user.mention} hello?")
    assert bot_services["feedback_log"].answer_for_message(str(world.bot_messages()[-1].id)).adapter == served
    status = await world.dave.slash(world.channel, "adapter status")
    assert f"`{version}` (active)" in status.response.content
    assert "close to the ones it was corrected on" in status.response.content  # routing, said

    rolled = await world.dave.slash(world.channel, "adapter rollback")
    assert "base model" in rolled.response.content
    assert adapters.choice_for(guild).top is None and registry.active() is None


async def test_promoting_an_unknown_version_says_so(world) -> None:
    result = await world.dave.slash(world.channel, "adapter promote", version="v0042")

    assert (
        result.ephemeral
        and "v0042" in (result.followups[-1] if result.followups else result.response).content
    )


async def test_train_reports_why_nothing_was_trained(world) -> None:
    result = await world.dave.slash(world.channel, "train")

    text = (result.followups[-1] if result.followups else result.response).content
    assert "not available" in text or "pair" in text


async def test_train_shows_the_runs_progress_then_its_outcome(bot_settings, bot_services) -> None:
    import time

    from simcord import Env

    from bot.discord_app import create_bot

    seen: list[str] = []

    def trainer(progress: Any, if_needed: bool, guild_id: str) -> str:
        # Stands in for the training subprocess only; the command and its messages are real.
        progress({"event": "step", "step": 10, "total": 40, "seconds": 20.0})
        time.sleep(0.5)  # the event loop edits the message meanwhile
        seen.extend(m.content for m in channel.history())  # what members see while it runs
        return "trained v0001 on 20 pairs in 90 s: promoted"

    env = Env(create_bot(bot_settings, trainer=trainer, **bot_services), settle_timeout=60)
    await env.start()
    try:
        guild = env.create_guild(name="cats")
        channel = guild.create_text_channel("general")
        admin = guild.add_member(
            env.create_user("dave"), roles=[guild.create_role(bot_settings.discord.admin_role)]
        )
        await env.settle()
        result = await admin.slash(channel, "train")
        assert "⏳ training: step 10 of 40, about 60 s left" in seen, seen
        # The outcome then replaces the progress message.
        assert "promoted" in result.response.content and not result.ephemeral
    finally:
        await env.shutdown()


async def test_the_training_schedule_runs_the_cycle_in_the_background(bot_settings, bot_services) -> None:
    from simcord import Env

    from bot.discord_app import create_bot

    bot_settings.discord.train_schedule_minutes = 30
    calls: list[bool] = []
    members: list[tuple[str, str]] = []
    # A member with a private 👍 answer (a personal pair): the schedule trains their own adapter too.
    log = bot_services["feedback_log"]
    answer = log.record_answer(
        guild_id="", channel_id="dm", user_id="4242", question="When is my vet visit?", context="",
        chunk_ids=[], prompt="", prompt_version="t", adapter=None, answer="On Friday.", private=True,
    )  # fmt: skip
    log.set_vote(answer, "4242", 1, True)

    def trainer(progress: Any, if_needed: bool, guild_id: str, member_id: str | None = None) -> str:
        # Stands in for the training subprocess only; the schedule and the bot around it are real.
        if member_id is not None:
            members.append((member_id, guild_id))
            return "nothing trained: 1 new pair(s)"
        assert guild_id.isdigit()
        calls.append(if_needed)
        progress({"event": "step", "step": 1})
        return "nothing trained: 0 new pair(s)"

    env = Env(create_bot(bot_settings, trainer=trainer, **bot_services), settle_timeout=60)
    await env.start()
    try:
        guild = env.create_guild(name="cats")  # each server the bot is in gets its own scheduled cycle
        await env.settle()
        first = len(calls)  # discord.ext.tasks runs the first iteration right after ready
        await env.advance_time(30 * 60)
        assert len(calls) == first + 1 and all(calls)  # every scheduled run is "if needed"
        # The member's own adapter is trained over the one server's adapter (served stacked on it);
        # the first iteration may run before the bot joined the server (then over none).
        assert members and members[-1] == ("4242", str(guild.id))
    finally:
        await env.shutdown()
