"""Privacy: ``/privacy`` (what loopbot holds about me, download it, forget it, learn from me or not;
admins: this server's learning switch), the one-time note, and the daily retention run.

Every reply is ephemeral; the download is an ephemeral file. The first time a member uses loopbot in
a server they get a short note saying what is kept and learned: under the command they ran (an
ephemeral follow-up), or, for a mention or a reaction, in a DM (a message cannot be ephemeral). A note
that cannot be delivered is tried again next time.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands, tasks

from bot.cogs._common import has_role
from bot.cogs._forget import FORGET_QUESTION, ForgetView, retrain, serving_callbacks
from bot.usecases.errors import user_errors
from bot.usecases.privacy import (
    export_file,
    export_member,
    privacy_note,
    privacy_report,
    server_learning_sentence,
    set_learning,
)
from feedback.privacy import apply_retention, forget_notice, guild_learning, set_guild_learning, take_notice

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

VIEW_TIMEOUT = 600.0
# Commands whose reply already says what the note says: using them counts as having read it.
SELF_EXPLAINING = {"help", "privacy"}
OnOff = Literal["on", "off"]


class PrivacyView(discord.ui.View):
    """Download my data / Forget everything under ``/privacy``; only the member who asked may press."""

    def __init__(self, cog: PrivacyCog, user_id: int) -> None:
        super().__init__(timeout=VIEW_TIMEOUT)
        self.cog = cog
        self.user_id = user_id

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        """Only the member whose data it is."""
        return interaction.user.id == self.user_id

    @discord.ui.button(label="Download my data", emoji="📦", style=discord.ButtonStyle.primary)
    async def download(
        self, interaction: discord.Interaction, button: discord.ui.Button[PrivacyView]
    ) -> None:
        """Send everything loopbot holds about the member as a JSON file only they see."""
        await self.cog.send_export(interaction)

    @discord.ui.button(label="Forget everything", style=discord.ButtonStyle.danger)
    async def forget(self, interaction: discord.Interaction, button: discord.ui.Button[PrivacyView]) -> None:
        """The same confirmation as ``/forget``."""
        services = self.cog.services
        refusal = services.limits.refusal("forget", str(interaction.user.id))
        if refusal:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        view = ForgetView(self.cog.bot, services, interaction.user.id)
        await interaction.response.send_message(FORGET_QUESTION, view=view, ephemeral=True)


class PrivacyCog(commands.Cog):
    """``/privacy``, the one-time note and retention."""

    def __init__(self, bot: commands.Bot, services: Services) -> None:
        self.bot = bot
        self.services = services

    async def cog_load(self) -> None:
        """Start the daily retention run when retention is on."""
        if self.services.settings.privacy.retention_days > 0:
            self.retention.start()

    async def cog_unload(self) -> None:
        """Stop the retention run with the cog."""
        self.retention.cancel()

    # ------------------------------------------------------------------ /privacy

    @app_commands.command(
        name="privacy",
        description="What loopbot holds about you: download it, forget it, or stop it learning.",
    )
    @app_commands.describe(
        learning="off: keep answering me but learn nothing from me (every server); on: learn again from now",
        server_learning="admins: turn learning from this server on or off",
    )
    async def privacy(
        self,
        interaction: discord.Interaction,
        learning: OnOff | None = None,
        server_learning: OnOff | None = None,
    ) -> None:
        """``/privacy [learning:] [server_learning:]``: the summary with its buttons, or the changes."""
        services = self.services
        user = str(interaction.user.id)
        guild = str(interaction.guild_id) if interaction.guild_id is not None else None
        refusal = ""
        if server_learning is not None and guild is None:
            refusal = (
                "`server_learning` is a server's setting: run `/privacy server_learning:` in that server "
                "(admins). Here, `/privacy learning:` changes yours, everywhere."
            )
        elif server_learning is not None and not has_role(
            interaction.user, services.settings.discord.admin_role
        ):
            refusal = (
                f"Turning this server's learning on or off needs the `{services.settings.discord.admin_role}` "
                "role. `/privacy learning: off` stops learning from you alone."
            )
        elif learning is not None:
            refusal = services.limits.refusal("learning", user)
        if refusal:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        said = []
        if server_learning is not None and guild is not None:
            on = server_learning == "on"
            changed = await asyncio.to_thread(set_guild_learning, services.feedback_log, guild, on)
            if changed:
                log.info("guild %s: learning turned %s", guild, server_learning)
            said.append(server_learning_sentence(on, changed))
        if learning is not None:
            serve, serve_member = serving_callbacks(services)
            outcome = await asyncio.to_thread(
                set_learning,
                services.feedback_log,
                user,
                learning == "on",
                adapters_dir=services.settings.adapters_dir,
                serve=serve,
                serve_member=serve_member,
            )
            retrain(self.bot, outcome.replaced)
            said.append(outcome.sentence())
        if said:
            await interaction.followup.send("\n".join(said)[:2000], ephemeral=True)
            return
        report = await asyncio.to_thread(
            privacy_report,
            services.knowledge_base,
            services.feedback_log,
            user,
            guild,
            adapters_dir=services.settings.adapters_dir,
            retention_days=services.settings.privacy.retention_days,
        )
        await interaction.followup.send(
            report.text(), view=PrivacyView(self, interaction.user.id), ephemeral=True
        )

    async def send_export(self, interaction: discord.Interaction) -> None:
        """Build the member's export off the event loop and send it as a file only they see."""
        services = self.services
        refusal = services.limits.refusal("export", str(interaction.user.id))
        if refusal:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)

        def build() -> tuple[str, bytes]:
            data = export_member(
                services.knowledge_base,
                services.feedback_log,
                str(interaction.user.id),
                adapters_dir=services.settings.adapters_dir,
            )
            return export_file(data)

        try:
            name, payload = await asyncio.to_thread(build)
        except user_errors() as error:  # nothing held about them: say so
            await interaction.followup.send(str(error), ephemeral=True)
            return
        await interaction.followup.send(
            "Everything loopbot holds about you (your copy: only you can see this message).",
            file=discord.File(io.BytesIO(payload), filename=name),
            ephemeral=True,
        )

    # ------------------------------------------------------------------ the one-time note

    @commands.Cog.listener()
    async def on_app_command_completion(self, interaction: discord.Interaction, command: Any) -> None:
        """A member's first command in a server: the note, under it."""
        if interaction.guild_id is None or interaction.user.bot:
            return
        if not await self._first_use(interaction.guild_id, interaction.user.id):
            return
        if getattr(command, "qualified_name", "").split(" ")[0] in SELF_EXPLAINING:
            return
        try:
            note = await self._note(interaction.guild_id)
            if interaction.response.is_done():
                await interaction.followup.send(note, ephemeral=True)
            else:
                await interaction.response.send_message(note, ephemeral=True)
        except discord.HTTPException as error:
            # e.g. the command answered with a form: show the note next time instead.
            log.debug("privacy note not delivered: %s", error)
            await asyncio.to_thread(
                forget_notice, self.services.feedback_log, str(interaction.guild_id), str(interaction.user.id)
            )

    @commands.Cog.listener()
    async def on_loopbot_member_active(self, user: discord.User | discord.Member, guild_id: int) -> None:
        """A member's first mention or vote in a server: the note, in a DM."""
        if user.bot or not await self._first_use(guild_id, user.id):
            return
        try:
            await user.send(await self._note(guild_id))
        except discord.HTTPException:  # DMs closed: the next command shows it
            await asyncio.to_thread(forget_notice, self.services.feedback_log, str(guild_id), str(user.id))

    async def _first_use(self, guild_id: int, user_id: int) -> bool:
        return await asyncio.to_thread(take_notice, self.services.feedback_log, str(guild_id), str(user_id))

    async def _note(self, guild_id: int) -> str:
        on = await asyncio.to_thread(guild_learning, self.services.feedback_log, str(guild_id))
        return privacy_note(on, self.services.settings.privacy.retention_days)

    # ------------------------------------------------------------------ retention

    @tasks.loop(hours=24)
    async def retention(self) -> None:
        """Delete answers nobody voted on or corrected once they are older than the retention setting."""
        days = self.services.settings.privacy.retention_days
        report = await asyncio.to_thread(apply_retention, self.services.feedback_log, days)
        if report.answers:
            log.info("retention: deleted %d unvoted answer(s) older than %d days", report.answers, days)

    @retention.before_loop
    async def _retention_after_ready(self) -> None:
        await self.bot.wait_until_ready()
