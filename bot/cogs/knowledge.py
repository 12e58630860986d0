"""Knowledge: ``/remember`` a personal record, ``/add`` a document, ``/forget`` everything about me.

Replies about personal data are ephemeral. Community documents need the curator role. Uploads go
through the same ingest code as the CLI (``ingest.load_bytes``) with the same limits.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs._common import has_role
from bot.cogs._forget import FORGET_QUESTION, ForgetView
from bot.usecases.errors import user_errors
from bot.usecases.knowledge import add_upload, ingest_limits, remember

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

MAX_REMEMBER_CHARS = 4000


class KnowledgeCog(commands.Cog):
    """Personal records, document uploads and forgetting, backed by the knowledge base."""

    def __init__(self, bot: commands.Bot, services: Services) -> None:
        self.bot = bot
        self.services = services

    @app_commands.command(name="remember", description="Store a personal record only your answers use.")
    @app_commands.describe(text="What to remember, e.g. 'Mochi sneezed twice a day in March 2024'")
    @app_commands.guild_only()
    async def remember(
        self, interaction: discord.Interaction, text: app_commands.Range[str, 1, MAX_REMEMBER_CHARS]
    ) -> None:
        """``/remember text:``: a personal record in this server, used for your answers only."""
        text = text.strip()
        refusal = "" if text else "There is nothing to remember: write some text."
        refusal = refusal or self.services.limits.refusal("remember", str(interaction.user.id))
        if refusal:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await asyncio.to_thread(
            remember,
            self.services.knowledge_base,
            text,
            guild_id=str(interaction.guild_id),
            owner_id=str(interaction.user.id),
            created=discord.utils.utcnow().isoformat(),
        )
        await interaction.followup.send(
            "Remembered. Only your own answers use it; `/forget` deletes all your records.", ephemeral=True
        )

    @app_commands.command(
        name="add", description="Add a document (txt, md, pdf, html, csv, jsonl, Discord export)."
    )
    @app_commands.describe(
        file="The document", scope="personal: only for you; community: for everyone (curators)"
    )
    @app_commands.guild_only()
    async def add(
        self,
        interaction: discord.Interaction,
        file: discord.Attachment,
        scope: Literal["personal", "community"] = "personal",
    ) -> None:
        """``/add file: scope:``: ingest an upload into your records or the community knowledge."""
        settings = self.services.settings
        private = scope == "personal"
        if scope == "community" and not has_role(interaction.user, settings.discord.curator_role):
            await interaction.response.send_message(
                f"Adding community documents needs the `{settings.discord.curator_role}` role. "
                "You can add it to your own records with `scope: personal`.",
                ephemeral=True,
            )
            return
        # Refuse an oversized upload before downloading it (same limit and unit as the ingest code).
        refusal = ""
        if file.size > settings.kb.max_file_mb * 1_000_000:
            refusal = (
                f"`{file.filename}` is {file.size / 1_000_000:.1f} MB; the limit is {settings.kb.max_file_mb:g} MB. "
                "Split it into smaller files."
            )
        refusal = refusal or self.services.limits.refusal("add", str(interaction.user.id))
        if refusal:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=private, thinking=True)
        data = await file.read()
        owner = str(interaction.user.id) if private else None
        try:
            report = await asyncio.to_thread(
                add_upload,
                self.services.knowledge_base,
                file.filename,
                data,
                scope=scope,
                guild_id=str(interaction.guild_id),
                owner_id=owner,
                limits=ingest_limits(settings.kb),
            )
        except user_errors() as error:
            await interaction.followup.send(f"I could not add `{file.filename}`: {error}", ephemeral=private)
            return
        if not report.chunks:
            await interaction.followup.send(
                f"I could not add `{file.filename}`." + _problems(report.problems), ephemeral=private
            )
            return
        where = "your personal records" if private else "the community knowledge"
        stored = report.stored
        added = stored.added if stored is not None else len(report.chunks)
        await interaction.followup.send(
            f"Added `{file.filename}` to {where}: {len(report.chunks)} passage(s), {added} new."
            + _problems(report.problems),
            ephemeral=private,
        )

    @app_commands.command(name="forget", description="Delete all your personal records and training pairs.")
    async def forget_command(self, interaction: discord.Interaction) -> None:
        """``/forget``: asks for confirmation, then deletes the member's records and pairs."""
        refusal = self.services.limits.refusal("forget", str(interaction.user.id))
        if refusal:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        await interaction.response.send_message(
            FORGET_QUESTION, view=ForgetView(self.bot, self.services, interaction.user.id), ephemeral=True
        )


def _problems(problems: list[str], limit: int = 5) -> str:
    if not problems:
        return ""
    shown = "\n".join(f"- {p}" for p in problems[:limit])
    more = f"\n- … and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"\n{shown}{more}"
