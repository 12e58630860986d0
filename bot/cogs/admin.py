"""Admin: ``/feedback stats``, ``/adapter status|promote|rollback``, ``/train`` and the training schedule.

Curators (and admins) may read stats and adapter status; changing the adapter or training needs the
admin role (or the Discord Administrator permission). A refused command says which role it needs.
Training runs in a worker thread that waits on the training subprocess, so the bot keeps answering.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands, tasks

from bot.cogs._common import has_role
from bot.usecases.errors import user_errors
from bot.usecases.training import promote, rollback

if TYPE_CHECKING:
    from adapters.registry import AdapterRegistry
    from bot.services import Services

log = logging.getLogger(__name__)

NOT_AVAILABLE = "Training is not available in this installation yet (no training cycle is configured)."


def describe_stats(stats: Any) -> str:
    """Feedback counts as a short message."""
    pairs = ", ".join(f"{kind} {count}" for kind, count in sorted(getattr(stats, "pairs", {}).items()))
    return (
        f"**Feedback**\nanswers {stats.answers} · 👍 {stats.upvotes} · 👎 {stats.downvotes}\n"
        f"corrections {stats.corrections} (accepted {stats.accepted}, pending {stats.pending})\n"
        f"pairs: {pairs or 'none'}"
    )


def describe_result(result: Any) -> str:
    """A training cycle's outcome in a few words, whatever shape the cycle returns."""
    if result is None:
        return "Training finished."
    summary = getattr(result, "summary", None)
    if callable(summary):
        summary = summary()
    return summary if isinstance(summary, str) and summary else str(result)


class AdminCog(commands.Cog):
    """Operator commands: feedback statistics, adapters and retraining."""

    feedback = app_commands.Group(
        name="feedback", description="The feedback the bot has collected.", guild_only=True
    )
    adapter = app_commands.Group(
        name="adapter", description="The LoRA adapter the bot answers with.", guild_only=True
    )

    def __init__(self, bot: commands.Bot, services: Services) -> None:
        self.bot = bot
        self.services = services
        self.training = asyncio.Lock()
        self.last_progress = ""

    async def cog_load(self) -> None:
        """Start the training schedule when one is configured."""
        minutes = self.services.settings.discord.train_schedule_minutes
        if minutes > 0 and self.services.trainer is not None:
            self.scheduled_training.change_interval(minutes=minutes)
            self.scheduled_training.start()

    async def cog_unload(self) -> None:
        """Stop the schedule with the cog."""
        self.scheduled_training.cancel()

    # ------------------------------------------------------------------ guards

    async def allowed(self, interaction: discord.Interaction, *, admin: bool) -> bool:
        """True when the member holds the needed role; otherwise reply why and return False."""
        settings = self.services.settings.discord
        roles = [settings.admin_role] if admin else [settings.admin_role, settings.curator_role]
        if any(has_role(interaction.user, role) for role in roles):
            return True
        needed = " or ".join(f"`{role}`" for role in roles)
        await interaction.response.send_message(f"This command needs the {needed} role.", ephemeral=True)
        return False

    # ------------------------------------------------------------------ feedback

    @feedback.command(name="stats", description="Answers, votes, corrections and training pairs so far.")
    async def feedback_stats(self, interaction: discord.Interaction) -> None:
        """``/feedback stats``: counts for this server."""
        if not await self.allowed(interaction, admin=False):
            return
        stats = await asyncio.to_thread(self.services.feedback_log.stats, str(interaction.guild_id))
        await interaction.response.send_message(describe_stats(stats), ephemeral=True)

    # ------------------------------------------------------------------ adapters

    @adapter.command(name="status", description="Which adapter answers now, and which versions exist.")
    async def adapter_status(self, interaction: discord.Interaction) -> None:
        """``/adapter status``: the active adapter, the versions and the last training progress."""
        if not await self.allowed(interaction, admin=False):
            return
        services = self.services
        runtime_active = getattr(services.runtime, "active_adapter", None)
        lines = [f"**Adapter**: {runtime_active or 'none (base model)'}"]
        if services.registry is not None:
            versions = await asyncio.to_thread(services.registry.list)
            for version in versions[-10:]:
                metrics = ", ".join(
                    f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in version.metrics.items()
                )
                marker = " (active)" if version.version == runtime_active else ""
                lines.append(
                    f"- `{version.version}`{marker}: {version.pair_count} pairs{'; ' + metrics if metrics else ''}"
                )
            if not versions:
                lines.append("No adapter has been trained yet.")
        if self.training.locked():
            lines.append(f"Training in progress: {self.last_progress or 'starting'}")
        await interaction.response.send_message("\n".join(lines)[:2000], ephemeral=True)

    @adapter.command(name="promote", description="Answer with this adapter version from now on.")
    @app_commands.describe(version="e.g. v0003")
    async def adapter_promote(self, interaction: discord.Interaction, version: str) -> None:
        """``/adapter promote version:``: make a version active and hot-swap it in the running bot."""

        def change(registry: AdapterRegistry) -> str:
            promoted = promote(registry, version, self.services.runtime)
            return f"Now answering with adapter `{promoted.version}`."

        await self._change_adapter(interaction, change)

    @adapter.command(name="rollback", description="Go back to the previously active adapter.")
    async def adapter_rollback(self, interaction: discord.Interaction) -> None:
        """``/adapter rollback``: the previous version (or the bare base model) answers again."""

        def change(registry: AdapterRegistry) -> str:
            previous = rollback(registry, self.services.runtime)
            if previous is None:
                return "Rolled back: answering with the base model alone."
            return f"Rolled back: answering with adapter `{previous.version}`."

        await self._change_adapter(interaction, change)

    async def _change_adapter(
        self, interaction: discord.Interaction, change: Callable[[AdapterRegistry], str]
    ) -> None:
        """Check the admin role, run ``change`` off the event loop and reply with what it says."""
        if not await self.allowed(interaction, admin=True):
            return
        registry = self.services.registry
        if registry is None:
            await interaction.response.send_message(NOT_AVAILABLE, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            text = await asyncio.to_thread(change, registry)
        except user_errors() as error:
            text = f"Nothing changed: {error}"
        await interaction.followup.send(text, ephemeral=True)

    # ------------------------------------------------------------------ training

    @app_commands.command(name="train", description="Retrain the adapter now from the collected feedback.")
    @app_commands.guild_only()
    async def train(self, interaction: discord.Interaction) -> None:
        """``/train``: run one training cycle (train, gate, promote if better) and report the outcome."""
        if not await self.allowed(interaction, admin=True):
            return
        if self.services.trainer is None:
            await interaction.response.send_message(NOT_AVAILABLE, ephemeral=True)
            return
        if self.training.locked():
            await interaction.response.send_message(
                f"A training run is already in progress: {self.last_progress or 'starting'}", ephemeral=True
            )
            return
        await interaction.response.defer(thinking=True)
        try:
            text = await self.run_training(if_needed=False)
        except user_errors() as error:
            text = f"Nothing was trained: {error}"
        await interaction.followup.send(text[:2000])

    async def run_training(self, *, if_needed: bool) -> str:
        """One training cycle off the event loop (it waits on the training subprocess); one at a time."""
        trainer = self.services.trainer
        assert trainer is not None
        async with self.training:
            self.last_progress = "starting"
            result = await asyncio.to_thread(trainer, self._progress, if_needed)
        return describe_result(result)

    def _progress(self, event: Any) -> None:
        # Called from the training thread; a plain attribute write is safe and the loop only reads it.
        self.last_progress = str(event)[:200]

    @tasks.loop(hours=24)
    async def scheduled_training(self) -> None:
        """The configured schedule: a cycle that trains only when enough new pairs exist."""
        if self.training.locked():
            return
        try:
            log.info("scheduled training: %s", await self.run_training(if_needed=True))
        except user_errors() as error:
            log.info("scheduled training skipped: %s", error)

    @scheduled_training.before_loop
    async def _wait_until_ready(self) -> None:
        await self.bot.wait_until_ready()
