"""Forgetting a member from Discord, shared by ``/forget`` and ``/privacy``'s button: the
confirmation, the use case run off the event loop with the running bot's adapters kept in step, and
the retrains it calls for. Turning learning off reaches served adapters through the same callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord

from bot.usecases.knowledge import forget_member

if TYPE_CHECKING:
    from discord.ext import commands

    from adapters.registry import AdapterVersion
    from bot.services import Services

FORGET_TIMEOUT = 120.0
FORGET_QUESTION = (
    "This deletes every personal record you stored and every training pair made from your "
    "questions, in every server. The next adapter is trained without them. Continue?"
)


def serving_callbacks(
    services: Services,
) -> tuple[Callable[[str, AdapterVersion | None], Any], Callable[[str, AdapterVersion | None], Any] | None]:
    """``(serve, serve_member)``: how a use case that retires adapters makes the running bot answer a
    guild (or a member's private answers) with the version it fell back to."""
    adapters = services.adapters

    def serve(guild: str, version: AdapterVersion | None) -> None:
        if adapters is not None:
            adapters.swap(guild, version)

    return serve, adapters.swap_member if adapters is not None else None


def retrain(bot: commands.Bot, replaced: dict[str, str | None]) -> None:
    """Ask for a retrain of every guild whose adapter held pairs that left (the admin cog runs them)."""
    for guild in replaced:
        if guild:
            bot.dispatch("loopbot_retrain_needed", guild)


async def forget_everything(bot: commands.Bot, services: Services, user_id: str) -> str:
    """Delete a member's records and pairs everywhere; the sentence that tells them what was deleted."""
    adapters = services.adapters
    serve, serve_member = serving_callbacks(services)
    summary = await asyncio.to_thread(
        forget_member,
        services.knowledge_base,
        services.feedback_log,
        user_id,
        adapters_dir=services.settings.adapters_dir,
        serve=serve,
        drop_own_adapter=(lambda: adapters.drop_member(user_id)) if adapters is not None else None,
        serve_member=serve_member,
    )
    retrain(bot, summary.replaced)
    return f"Done: {summary.sentence()}."


class ForgetView(discord.ui.View):
    """Confirm / Cancel for forgetting everything; only the member who asked can press them."""

    def __init__(self, bot: commands.Bot, services: Services, user_id: int) -> None:
        super().__init__(timeout=FORGET_TIMEOUT)
        self.bot = bot
        self.services = services
        self.user_id = user_id

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        """Only the member who asked may confirm it."""
        return interaction.user.id == self.user_id

    @discord.ui.button(label="Forget everything", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button[ForgetView]) -> None:
        """Delete the member's personal records and training pairs."""
        await interaction.response.defer()
        text = await forget_everything(self.bot, self.services, str(interaction.user.id))
        self.stop()
        await interaction.edit_original_response(content=text, view=None)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button[ForgetView]) -> None:
        """Keep everything."""
        self.stop()
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)
