"""The Discord bot: a ``commands.Bot`` holding loopbot's services, with one cog per feature area.

``create_bot(settings, **overrides)`` builds it without connecting. Services not passed in are built
from settings through :mod:`bot.wiring` (which may load the model, so it happens here, not at import).
Tests pass real parts built on temp dirs and a tiny model instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs import channel_refusal
from bot.services import PersonalProbe, Services, Trainer
from bot.settings import Settings, load_settings
from bot.usecases.errors import user_errors

if TYPE_CHECKING:
    from adapters.registry import AdapterVersion
    from bot.usecases.serving import GuildAdapters

log = logging.getLogger(__name__)


class LoopTree(app_commands.CommandTree):
    """The slash-command tree: refuses commands outside the allowed channels, explains failures."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        """Commands run only in allowed channels (DMs and an empty allow-list: everywhere)."""
        bot = interaction.client
        assert isinstance(bot, LoopBot)
        refusal = channel_refusal(interaction.channel, bot.services.settings.discord.allowed_channels)
        if refusal:
            await interaction.response.send_message(refusal, ephemeral=True)
        return not refusal

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError, /
    ) -> None:
        """A library error becomes a clear reply; anything else is logged and reported briefly."""
        bot = interaction.client
        assert isinstance(bot, LoopBot)
        cause = getattr(error, "original", error)
        if isinstance(cause, user_errors()):
            text = str(cause)
        else:
            log.error("command %s failed", interaction.command and interaction.command.name, exc_info=cause)
            text = "Something went wrong on my side; the operator can see the details in the log."
            await super().on_error(interaction, error)
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)


class LoopBot(commands.Bot):
    """loopbot's Discord client. Cogs reach the services through ``bot.services``."""

    def __init__(self, services: Services) -> None:
        intents = discord.Intents.default()
        intents.guilds = True
        intents.messages = True
        intents.message_content = True
        intents.reactions = True
        intents.members = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=LoopTree,
            help_command=None,
            # Answers quote members and model output; nothing the bot writes ever pings anyone.
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.services = services

    async def setup_hook(self) -> None:
        """Add the cogs and sync the slash commands (runs once, after login, before the gateway)."""
        from bot.cogs import COGS

        services = self.services
        if services.runtime is not None:
            from bot.usecases.serving import adopt_legacy_adapters

            # Adapters trained before per-guild learning belong to the one guild there was.
            await asyncio.to_thread(
                adopt_legacy_adapters, services.settings.adapters_dir, services.feedback_log
            )
        if services.knowledge_base is not None:
            # Own the embedded store's writer lock from the start, so a CLI ingest running beside the
            # bot fails at once with a clear message instead of the bot's first /remember failing.
            await asyncio.to_thread(services.knowledge_base.claim)
        for cog in COGS:
            await self.add_cog(cog(self, services))
        synced = await self.tree.sync()
        log.info("synced %d application commands", len(synced))

    async def on_message(self, message: discord.Message, /) -> None:
        """No prefix commands: the cogs' listeners handle messages (else every mention is a CommandNotFound)."""

    async def on_ready(self) -> None:
        """Log who we are and where (the operator's first sign that the token worked)."""
        log.info("logged in as %s in %d guild(s)", self.user, len(self.guilds))

    async def close(self) -> None:
        """Close Discord first, then the stores (their writers must flush before the process ends)."""
        await super().close()
        for closeable in (self.services.feedback_log, self.services.knowledge_base):
            close = getattr(closeable, "close", None)
            if callable(close):
                await asyncio.to_thread(close)


def _probe_for(answer_service: Any) -> PersonalProbe:
    """The privacy probe: the answer service's own retrieval, asked whether a personal record comes back."""
    from bot.usecases.asking import retrieves_personal

    def probe(question: str, user_id: str, guild_id: str) -> bool:
        return retrieves_personal(answer_service, question, user_id=user_id, guild_id=guild_id)

    return probe


def _trainer_for(services: Services) -> Trainer:
    """One guild's training cycle (or one member's own adapter's) on the bot's own parts,
    hot-swapping a promoted adapter into the runtime for that guild (or that member) only."""

    def trainer(
        progress: Callable[[Any], None], if_needed: bool, guild_id: str, member_id: str | None = None
    ) -> Any:
        from bot.usecases.training import run_training_cycle
        from bot.wiring import build_training_parts

        adapters = services.adapters
        serve: Callable[[AdapterVersion | None], Any] | None = None
        if adapters is not None:
            serve = (
                partial(adapters.swap_member, member_id) if member_id else partial(adapters.swap, guild_id)
            )
        parts = build_training_parts(
            services.settings,
            services.feedback_log,
            guild_id=guild_id or None,  # a member's adapter is trained over this guild's (if any)
            member_id=member_id,
            runtime=services.runtime,
            serve=serve,
            embeddings=getattr(services.knowledge_base, "embeddings", None),
        )
        return run_training_cycle(services.settings, parts, progress=progress, if_needed=if_needed)

    return trainer


def _guild_adapters(settings: Settings, services: Services) -> GuildAdapters | None:
    """Which adapters answer each guild and member on the bot's runtime (None without a runtime or
    registries: nothing to serve)."""
    from adapters.registry import member_registry
    from bot.usecases.serving import GuildAdapters

    if services.runtime is None or services.registry_for is None:
        return None
    return GuildAdapters(
        services.runtime, services.registry_for, lambda member: member_registry(settings.adapters_dir, member)
    )


def create_bot(settings: Settings | None = None, **overrides: Any) -> LoopBot:
    """Build the bot without connecting.

    ``overrides`` replace services by name (any field of :class:`~bot.services.Services`:
    ``runtime``, ``answer_service``, ``knowledge_base``, ``feedback_log``, ``registry_for``,
    ``adapters``, ``trainer``, ``personal_probe``, ``limits``, ``pending_answers``); missing ones are
    built from ``settings`` with :mod:`bot.wiring`.
    """
    from bot import wiring

    settings = settings or load_settings()
    unknown = set(overrides) - set(Services.__dataclass_fields__) - {"settings"}
    if unknown:
        raise TypeError(f"create_bot() got unknown services: {', '.join(sorted(unknown))}")

    def get(name: str, build: Callable[[], Any]) -> Any:
        return overrides[name] if name in overrides else build()

    feedback_log = get("feedback_log", lambda: wiring.build_feedback_log(settings))
    knowledge_base = get("knowledge_base", lambda: wiring.build_knowledge_base(settings))
    # No default adapter: GuildAdapters serves each guild its own (first question, registry watch).
    runtime = get(
        "runtime",
        lambda: wiring.build_runtime(settings) if "answer_service" not in overrides else None,
    )
    answer_service = get(
        "answer_service",
        lambda: wiring.build_answer_service(settings, kb=knowledge_base, runtime=runtime),
    )
    services = Services(
        settings=settings,
        answer_service=answer_service,
        knowledge_base=knowledge_base,
        feedback_log=feedback_log,
        runtime=runtime,
        registry_for=get("registry_for", lambda: lambda guild: wiring.build_registry(settings, guild)),
        personal_probe=get("personal_probe", lambda: _probe_for(answer_service)),
        pending_answers=get("pending_answers", set),
    )
    if "limits" in overrides:  # built from the settings otherwise (Services.__post_init__)
        services.limits = overrides["limits"]
    services.adapters = get("adapters", lambda: _guild_adapters(settings, services))
    services.trainer = get("trainer", lambda: _trainer_for(services))
    return LoopBot(services)
