"""``/help``: what members can do, how a correction differs from a reply, and what is kept and learned."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from feedback.privacy import guild_learning

if TYPE_CHECKING:
    from bot.services import Services


def help_text(services: Services, server_learning: bool | None = None) -> str:
    """The gestures the bot understands, with this installation's emoji and vote threshold, and what it
    keeps and learns (``server_learning``: this server's switch; None in a DM)."""
    d = services.settings.discord
    days = services.settings.privacy.retention_days
    kept = f"answers nobody votes on or corrects go after {days} days" if days else "answers are kept"
    learning = (
        ""
        if server_learning is None
        else " Learning in this server is **on**: voted and corrected answers train its adapter."
        if server_learning
        else " Learning in this server is **off**: nothing here trains the model."
    )
    return (
        "**Asking**\n"
        "- Mention me with a question, or use `/ask` (`private: True` to see the answer alone).\n"
        "- Reply to one of my answers to continue the conversation: the reply chain is what I remember. "
        "A reply is never taken as a correction.\n"
        "- In a DM, every message is a question (nothing from a server is searched there).\n"
        "**Feedback**\n"
        f"- React {d.upvote_emoji} or {d.downvote_emoji} on an answer (private answers have buttons).\n"
        "- To correct an answer, press ✏️ **Correct** under it, or use the message menu "
        "*Apps → Correct answer*. The asker's, a curator's or an admin's correction counts at once; "
        f"anyone else's once {d.correction_votes} members react {d.upvote_emoji} to it.\n"
        "- Corrections become posts I find for the next question, and train this server's adapter. A "
        "correction of a private answer stays yours.\n"
        "**Your records**\n"
        "- `/remember` a personal note, or `/add` a file with `scope: personal`: only your own answers "
        "use them, and what you teach from them trains only your own data, never this server's adapter.\n"
        "- `/forget` deletes all your records, answers, votes and corrections, in every server.\n"
        "**Privacy**\n"
        f"- I keep your questions and my answers ({kept}), votes, corrections and notes.{learning}\n"
        "- `/privacy` shows what I hold about you, downloads it or forgets it; `/privacy learning: off` keeps "
        "me answering you but learning nothing from you. Admins: `/privacy server_learning:`.\n"
        "**Curators and admins**\n"
        f"- `/add` with `scope: community` (`{d.curator_role}`), `/feedback stats`, `/adapter status`; "
        f"`/train`, `/adapter promote`, `/adapter rollback` (`{d.admin_role}`), for this server only."
    )


class HelpCog(commands.Cog):
    """The ``/help`` command."""

    def __init__(self, bot: commands.Bot, services: Services) -> None:
        self.bot = bot
        self.services = services

    @app_commands.command(name="help", description="What loopbot can do and how to correct it.")
    async def help(self, interaction: discord.Interaction) -> None:
        """``/help``: the gestures, privately."""
        learning = None
        if interaction.guild_id is not None:
            learning = await asyncio.to_thread(
                guild_learning, self.services.feedback_log, str(interaction.guild_id)
            )
        await interaction.response.send_message(help_text(self.services, learning), ephemeral=True)
