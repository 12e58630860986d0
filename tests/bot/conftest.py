"""Fixtures for the Discord bot tests: the real bot in simcord, on real stores and a tiny real model.

- ``bot_settings``: settings on a temp data dir (fast edits, 2 votes accept a correction, 3 asks a minute).
- ``bot_services``: a temp-dir Chroma knowledge base with the packaged MiniLM embedder, a temp SQLite
  feedback log, an adapter registry, and the answer service over the tiny GPTQ runtime.
- ``simcord_bot`` / ``simcord_env``: the bot built by ``create_bot`` with those services, running in
  simcord (a generous settle timeout: answers come from a real model in a worker thread).
- ``world``: a guild with a #general channel, the admin and curator roles, and members alice and bob
  (plain), carol (curator), dave (admin), who have all seen the one-time privacy note already.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from bot.settings import DiscordSettings, KnowledgeSettings, Settings

SETTLE_TIMEOUT = 300.0  # generous: CI machines are slow and answers come from a real model


@pytest.fixture(scope="session")
def bot_embeddings() -> Any:
    """The packaged MiniLM embedder (loaded once per session)."""
    from knowledge.embeddings import load_embeddings

    return load_embeddings("")


@pytest.fixture(scope="session")
def bot_runtime(tiny_gptq_dir: Path) -> Iterator[Any]:
    """One tiny GPTQ runtime for the bot tests: random weights, so the words are noise but the path is real.

    It samples (temperature 1): greedy decoding of random weights emits only whitespace at first.
    """
    from adapters.serving import ModelRuntime

    runtime = ModelRuntime.load(tiny_gptq_dir, device="cpu", max_new_tokens=16, temperature=1.0)
    yield runtime
    runtime.close()


@pytest.fixture
def bot_settings(tmp_path: Path) -> Settings:
    """Settings on a temp data dir, tuned so tests exercise limits quickly."""
    return Settings(
        data_dir=tmp_path / "data",
        discord=DiscordSettings(edit_interval=0.05, correction_votes=2, rate_limit_per_minute=3),
        kb=KnowledgeSettings(max_file_mb=0.01),  # 10 kB: an oversized upload is easy to make
    )


@pytest.fixture
def bot_services(bot_settings: Settings, bot_embeddings: Any, bot_runtime: Any) -> Iterator[dict[str, Any]]:
    """Real services on temp dirs: knowledge base, feedback log, answer service (each guild's adapter
    registry is built by the bot under ``bot_settings.adapters_dir``)."""
    from bot import wiring

    knowledge_base = wiring.build_knowledge_base(bot_settings, bot_embeddings)
    feedback_log = wiring.build_feedback_log(bot_settings)
    services = {
        "knowledge_base": knowledge_base,
        "feedback_log": feedback_log,
        "runtime": bot_runtime,
        "answer_service": wiring.build_answer_service(bot_settings, kb=knowledge_base, runtime=bot_runtime),
    }
    yield services
    bot_runtime.set_active_adapter(None)
    for name in bot_runtime.adapters:  # each guild's adapters, loaded by the bot under its own names
        bot_runtime.unload_adapter(name)
    bot_runtime.default_max_new_tokens = 16
    knowledge_base.close()
    feedback_log.close()


@pytest.fixture
def simcord_bot(bot_settings: Settings, bot_services: dict[str, Any]) -> Any:
    """The real bot, built by ``create_bot`` with the services above."""
    from bot.discord_app import create_bot

    return create_bot(bot_settings, **bot_services)


@pytest_asyncio.fixture
async def simcord_env(simcord_bot: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """simcord's environment around the bot, with a settle timeout that fits real generation."""
    from simcord import Env

    marker = request.node.get_closest_marker("simcord")
    options = {"settle_timeout": SETTLE_TIMEOUT, **(marker.kwargs if marker else {})}
    env = Env(simcord_bot, **options)
    await env.start()
    try:
        yield env
    finally:
        await env.shutdown()
        if env.check_errors:
            env.raise_errors()


@pytest_asyncio.fixture
async def world(simcord_env: Any, bot_settings: Settings) -> SimpleNamespace:
    """A guild with #general, the admin and curator roles and four members."""
    guild = simcord_env.create_guild(name="cats")
    channel = guild.create_text_channel("general")
    admin_role = guild.create_role(bot_settings.discord.admin_role)
    curator_role = guild.create_role(bot_settings.discord.curator_role)
    world = SimpleNamespace(
        env=simcord_env,
        bot=simcord_env.bot,
        guild=guild,
        channel=channel,
        alice=guild.add_member(simcord_env.create_user("alice")),
        bob=guild.add_member(simcord_env.create_user("bob")),
        carol=guild.add_member(simcord_env.create_user("carol"), roles=[curator_role]),
        dave=guild.add_member(simcord_env.create_user("dave"), roles=[admin_role]),
    )

    def bot_messages(viewer: Any = None) -> list[Any]:
        """The bot's messages in #general, oldest first (as ``viewer`` sees them, if given)."""
        me = simcord_env.bot.user.id
        return [m for m in channel.history(viewer=viewer) if m.author.id == me]

    world.bot_messages = bot_messages
    # They have used loopbot before: their one-time privacy note is behind them (tests/bot/test_privacy.py
    # meets the note with newcomers).
    from feedback.privacy import take_notice

    for member in (world.alice, world.bob, world.carol, world.dave):
        take_notice(simcord_env.bot.services.feedback_log, str(guild.id), str(member.id))
    await simcord_env.settle()
    return world


@pytest.fixture
def add_post(world: SimpleNamespace, bot_services: dict[str, Any]) -> Any:
    """``add_post(text, source=..., scope="community", owner=None)``: put a passage in the knowledge base."""
    from ingest import text_chunks

    def add(
        text: str, *, source: str = "feeding-guide.md", scope: str = "community", owner: Any = None
    ) -> None:
        owner_id = str(owner.id) if owner is not None else None
        chunks = text_chunks(
            text, source=source, scope=scope, guild_id=str(world.guild.id), owner_id=owner_id
        )
        bot_services["knowledge_base"].add(chunks)

    return add
