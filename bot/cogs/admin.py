"""Admin: ``/feedback stats``, ``/adapter status|promote|rollback``, ``/train`` and the training schedule.

Curators (and admins) may read stats and adapter status; changing the adapter or training needs the
admin role (or the Discord Administrator permission). A refused command says which role it needs.
Training runs in a worker thread that waits on the training subprocess, so the bot keeps answering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands, tasks

from bot.cogs._common import has_role
from bot.cogs._progress import describe_progress
from bot.usecases.errors import user_errors
from bot.usecases.serving import promote, rollback
from feedback.privacy import guild_learning

if TYPE_CHECKING:
    from adapters.registry import AdapterRegistry, AdapterVersion
    from bot.services import Services

log = logging.getLogger(__name__)

NOT_AVAILABLE = "Training is not available in this installation yet (no training cycle is configured)."
PROGRESS_EDIT_SECONDS = 5.0  # /train edits its message with the run's progress at most this often


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
        self.training_guild = ""
        self.last_progress = ""
        self._on_progress: Callable[[], None] | None = None  # the running /train's message update

    async def cog_load(self) -> None:
        """Start following the registries, and the training schedule when one is configured."""
        seconds = self.services.settings.discord.registry_poll_seconds
        if seconds > 0 and self.services.adapters is not None:
            self.watch_registries.change_interval(seconds=seconds)
            self.watch_registries.start()
        minutes = self.services.settings.discord.train_schedule_minutes
        if minutes > 0 and self.services.trainer is not None:
            self.scheduled_training.change_interval(minutes=minutes)
            self.scheduled_training.start()

    async def cog_unload(self) -> None:
        """Stop the schedule and the registry watch with the cog."""
        self.scheduled_training.cancel()
        self.watch_registries.cancel()

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
        guild = str(interaction.guild_id)
        adapters, registry_for = self.services.adapters, self.services.registry_for
        choice = await asyncio.to_thread(adapters.choice_for, guild) if adapters is not None else None
        serving = choice.label() if choice is not None and choice.names else None
        learning = await asyncio.to_thread(guild_learning, self.services.feedback_log, guild)
        lines = [
            f"**Adapter**: {serving or 'none (base model)'}",
            "Learning in this server: on"
            if learning
            else "Learning in this server: **off** (no new pairs, no training; `/privacy server_learning: on`)",
        ]
        threshold = self.services.settings.model.adapter_min_similarity
        if (
            serving and threshold > 0
        ):  # adapters.serving.QuestionRouting: only questions close to what it was taught
            lines.append(
                "It answers questions close to the ones it was corrected on (similarity ≥ "
                f"{threshold:g}); the base model answers the others."
            )
        if registry_for is not None:
            versions = await asyncio.to_thread(registry_for(guild).list)
            for version in versions[-10:]:
                metrics = ", ".join(
                    f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in version.metrics.items()
                )
                marker = " (active)" if version.served_name == serving else ""
                lines.append(
                    f"- `{version.version}`{marker}: {version.pair_count} pairs{'; ' + metrics if metrics else ''}"
                )
            if not versions:
                lines.append("No adapter has been trained for this server yet.")
        if self.training.locked():
            lines.append(self._training_note(guild))
        await interaction.response.send_message("\n".join(lines)[:2000], ephemeral=True)

    @adapter.command(name="promote", description="Answer with this adapter version from now on.")
    @app_commands.describe(version="e.g. v0003")
    async def adapter_promote(self, interaction: discord.Interaction, version: str) -> None:
        """``/adapter promote version:``: make a version active and hot-swap it in the running bot."""

        def change(registry: AdapterRegistry, serve: Callable[[AdapterVersion | None], Any]) -> str:
            forgotten = self.services.feedback_log.forgotten_pair_ids()
            promoted = promote(registry, version, forgotten_pair_ids=forgotten, serve=serve)
            return f"Now answering with adapter `{promoted.version}`."

        await self._change_adapter(interaction, change)

    @adapter.command(name="rollback", description="Go back to the previously active adapter.")
    async def adapter_rollback(self, interaction: discord.Interaction) -> None:
        """``/adapter rollback``: the previous version (or the bare base model) answers again."""

        def change(registry: AdapterRegistry, serve: Callable[[AdapterVersion | None], Any]) -> str:
            forgotten = self.services.feedback_log.forgotten_pair_ids()
            previous = rollback(registry, forgotten_pair_ids=forgotten, serve=serve)
            if previous is None:
                return "Rolled back: answering with the base model alone."
            return f"Rolled back: answering with adapter `{previous.version}`."

        await self._change_adapter(interaction, change)

    async def _change_adapter(
        self,
        interaction: discord.Interaction,
        change: Callable[[AdapterRegistry, Callable[[AdapterVersion | None], Any]], str],
    ) -> None:
        """Check the admin role, run ``change`` on this server's registry off the event loop (swapping
        the served adapter for this server only) and reply with what it says."""
        if not await self.allowed(interaction, admin=True):
            return
        registry_for, adapters = self.services.registry_for, self.services.adapters
        if registry_for is None:
            await interaction.response.send_message(NOT_AVAILABLE, ephemeral=True)
            return
        guild = str(interaction.guild_id)

        def serve(version: AdapterVersion | None) -> None:
            if adapters is not None:
                adapters.swap(guild, version)

        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            text = await asyncio.to_thread(change, registry_for(guild), serve)
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
        guild = str(interaction.guild_id)
        if self.training.locked():
            await interaction.response.send_message(self._training_note(guild), ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        last_edit: float | None = None
        edits: list[asyncio.Future[Any]] = []

        def show_progress() -> None:
            # On the event loop; Discord rate-limits edits, so at most one every few seconds.
            nonlocal last_edit
            if last_edit is None or time.monotonic() - last_edit >= PROGRESS_EDIT_SECONDS:
                last_edit = time.monotonic()
                edit = interaction.edit_original_response(content=f"⏳ {self.last_progress}"[:2000])
                edits.append(asyncio.ensure_future(edit))

        self._on_progress = show_progress
        try:
            text = await self.run_training(guild, if_needed=False)
        except user_errors() as error:
            text = f"Nothing was trained: {error}"
        finally:
            self._on_progress = None
        await asyncio.gather(*edits, return_exceptions=True)  # no late progress over the outcome
        await interaction.edit_original_response(content=text[:2000])

    async def run_training(self, guild_id: str, *, if_needed: bool, member_id: str | None = None) -> str:
        """One server's training cycle (or one member's own adapter's, trained over ``guild_id``'s
        adapter if given) off the event loop (it waits on the training subprocess); one run at a time
        on the machine."""
        trainer = self.services.trainer
        assert trainer is not None
        async with self.training:
            # a member's own run is nobody else's business: no server's members see its progress
            self.training_guild = guild_id if member_id is None else ""
            self.last_progress = "starting"
            own = {"member_id": member_id} if member_id is not None else {}
            result = await asyncio.to_thread(trainer, self._progress, if_needed, guild_id, **own)
        return describe_result(result)

    def _training_note(self, guild_id: str) -> str:
        """What a member of ``guild_id`` may know about the run in progress (another server's: only that)."""
        if self.training_guild != guild_id:
            return "Another training run is in progress; try again when it is done."
        return f"A training run is already in progress: {self.last_progress or 'starting'}"

    def _progress(self, event: Any) -> None:
        # Called from the training thread: a plain attribute write is safe (the loop only reads it);
        # the message update is handed to the event loop.
        self.last_progress = describe_progress(event)
        if self._on_progress is not None:
            self.bot.loop.call_soon_threadsafe(self._on_progress)

    @tasks.loop(hours=24)
    async def scheduled_training(self) -> None:
        """The configured schedule: a cycle that trains only when enough new pairs exist."""
        for guild in self.bot.guilds:
            if self.training.locked():
                return
            try:
                log.info(
                    "scheduled training, guild %s: %s",
                    guild.id,
                    await self.run_training(str(guild.id), if_needed=True),
                )
            except user_errors() as error:
                log.info("scheduled training skipped, guild %s: %s", guild.id, error)
        # Then each member's own adapter, on their personal pairs (ids only in the log: no text),
        # trained over the server's adapter when the bot serves one server (with several, over none).
        over = str(self.bot.guilds[0].id) if len(self.bot.guilds) == 1 else ""
        for member in await asyncio.to_thread(self.services.feedback_log.personal_pair_owners):
            if self.training.locked():
                return
            try:
                outcome = await self.run_training(over, if_needed=True, member_id=member)
                log.info("scheduled training, member %s: %s", member, outcome)
            except user_errors() as error:
                log.info("scheduled training skipped, member %s: %s", member, error)

    @commands.Cog.listener()
    async def on_loopbot_retrain_needed(self, guild_id: str) -> None:
        """A forget replaced a server's adapter: retrain it without the forgotten pairs, in the background."""
        if self.services.trainer is None:
            return
        try:
            log.info(
                "retrain after a forget, guild %s: %s",
                guild_id,
                await self.run_training(guild_id, if_needed=False),
            )
        except user_errors() as error:
            log.info("retrain after a forget skipped, guild %s: %s", guild_id, error)

    @tasks.loop(seconds=5)
    async def watch_registries(self) -> None:
        """Follow the registries on disk: a CLI promote, rollback or train reaches the bot in seconds."""
        adapters = self.services.adapters
        if adapters is not None:
            await asyncio.to_thread(adapters.refresh, [str(g.id) for g in self.bot.guilds])

    @watch_registries.before_loop
    async def _watch_after_ready(self) -> None:
        await self.bot.wait_until_ready()

    @scheduled_training.before_loop
    async def _wait_until_ready(self) -> None:
        await self.bot.wait_until_ready()
