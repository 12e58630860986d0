"""Feedback: 👍/👎 on answers, and corrections by ✏️ or the "Correct answer" message menu.

A correction is always an explicit act: the ✏️ button under an answer or the message menu, both of
which open a form. A plain reply to an answer is not a correction: it continues the conversation (the
ask cog answers it). A correction is trusted (accepted at once) when its author asked the question or
holds the curator or admin role; otherwise it is accepted when ``correction_votes`` other members
react 👍 to the posted correction. An accepted correction becomes a post, retrievable at once. A
correction of a private answer stays private. Every record is durable before the bot acknowledges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs._views import ACCEPTED_EMOJI, CorrectButton, CorrectionModal, VoteButton, mark, trusted
from bot.usecases.feedback import vote_on_correction

if TYPE_CHECKING:
    from bot.services import Services
    from feedback.log import FeedbackLog
    from feedback.records import AnswerRecord

log = logging.getLogger(__name__)

# How long a vote on an answer that is still being written waits for the answer to be logged.
PENDING_ANSWER_TIMEOUT = 300.0


class FeedbackCog(commands.Cog):
    """Votes and corrections, recorded in the feedback log."""

    def __init__(self, bot: commands.Bot, services: Services) -> None:
        self.bot = bot
        self.services = services
        self.menu = app_commands.ContextMenu(name="Correct answer", callback=self.correct_answer)

    async def cog_load(self) -> None:
        """Register the context menu (it cannot be a decorated cog method) and the answer buttons."""
        self.bot.tree.add_command(self.menu)
        self.bot.add_dynamic_items(VoteButton, CorrectButton)

    async def cog_unload(self) -> None:
        """Remove the context menu and the answer buttons with the cog."""
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)
        self.bot.remove_dynamic_items(VoteButton, CorrectButton)

    @property
    def log(self) -> FeedbackLog:
        """The feedback log."""
        return self.services.feedback_log

    # ------------------------------------------------------------------ reactions

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """👍/👎 on an answer is a vote; 👍 on a pending correction counts toward accepting it."""
        await self._reaction(payload, present=True)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        """Taking a reaction back takes the vote back."""
        await self._reaction(payload, present=False)

    async def _reaction(self, payload: discord.RawReactionActionEvent, *, present: bool) -> None:
        settings = self.services.settings.discord
        me = self.bot.user
        if me is None or payload.user_id == me.id:
            return
        emoji = str(payload.emoji)
        if emoji not in (settings.upvote_emoji, settings.downvote_emoji):
            return
        message_id, user_id = str(payload.message_id), str(payload.user_id)
        answer = await self._answer_for(payload)
        if answer is not None:
            value: Literal[1, -1] = 1 if emoji == settings.upvote_emoji else -1
            await asyncio.to_thread(self.log.set_vote, answer.id, user_id, value, present)
            if present and payload.member is not None and payload.guild_id is not None:
                # A first vote in a server gets the privacy note (privacy cog): votes train too.
                self.bot.dispatch("loopbot_member_active", payload.member, payload.guild_id)
            return
        if emoji != settings.upvote_emoji:
            return
        correction = await asyncio.to_thread(self.log.correction_for_message, message_id)
        if correction is None:
            return
        answer = await asyncio.to_thread(self.log.get_answer, correction.answer_id)
        if answer is None:
            return
        guild = self.bot.get_guild(payload.guild_id) if payload.guild_id else None
        voter = payload.member or (guild.get_member(payload.user_id) if guild else None)
        outcome = await asyncio.to_thread(
            vote_on_correction,
            self.log,
            self.services.knowledge_base,
            correction,
            answer,
            voter_id=user_id,
            present=present,
            votes_needed=settings.correction_votes,
            # The asker's or a curator's 👍 accepts a stranger's correction at once.
            trusted=voter is not None and trusted(self.services, answer, voter, guild),
            private=payload.guild_id is None,
        )
        if outcome is not None and outcome.newly_accepted:
            await mark(self.bot, payload.channel_id, payload.message_id, ACCEPTED_EMOJI)

    async def _answer_for(self, payload: discord.RawReactionActionEvent) -> AnswerRecord | None:
        """The logged answer behind the reacted message. A vote on one of the bot's messages that is
        still streaming waits until its answer is logged, so no early 👍 is lost."""
        message_id = str(payload.message_id)
        waiter: asyncio.Future[Any] | None = None
        if payload.message_id in self.services.pending_answers and payload.event_type == "REACTION_ADD":
            # Listen before looking, so an answer logged in between is not missed.
            waiter = asyncio.ensure_future(
                self.bot.wait_for(
                    "loopbot_answer",
                    check=lambda _id, sent: any(m.id == payload.message_id for m in sent),
                    timeout=PENDING_ANSWER_TIMEOUT,
                )
            )
        try:
            answer = await asyncio.to_thread(self.log.answer_for_message, message_id)
            if answer is None and waiter is not None:
                with contextlib.suppress(TimeoutError):
                    await waiter
                answer = await asyncio.to_thread(self.log.answer_for_message, message_id)
            return answer
        finally:
            if waiter is not None and not waiter.done():
                waiter.cancel()

    # ------------------------------------------------------------------ corrections

    async def correct_answer(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Message menu "Correct answer": opens a form to write the right answer."""
        answer = await asyncio.to_thread(self.log.answer_for_message, str(message.id))
        if answer is None:
            await interaction.response.send_message(
                "That message is not one of my answers; use this on an answer I wrote.", ephemeral=True
            )
            return
        await interaction.response.send_modal(CorrectionModal(answer, message))
