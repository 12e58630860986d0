"""Feedback: 👍/👎 on answers, corrections by reply or by the "Correct answer" message menu.

A reply to a bot answer that does not mention the bot is a correction. It is trusted (accepted at
once) when its author asked the question or holds the curator role; otherwise it is accepted when
``correction_votes`` other members react 👍 to it. An accepted correction becomes a community post,
retrievable at once. Every record is durable before the bot acknowledges it with a reaction.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs._common import has_role
from bot.cogs._views import VoteButton
from bot.usecases.feedback import CorrectionOutcome, correct, trusted_author, vote_on_correction

if TYPE_CHECKING:
    from bot.services import Services
    from feedback.log import FeedbackLog
    from feedback.records import AnswerRecord, CorrectionRecord

log = logging.getLogger(__name__)

RECORDED_EMOJI = "📝"
ACCEPTED_EMOJI = "✅"
MAX_CORRECTION_CHARS = 4000


class CorrectionModal(discord.ui.Modal, title="Correct this answer"):
    """The form behind the "Correct answer" message command."""

    text: discord.ui.TextInput[CorrectionModal] = discord.ui.TextInput(
        custom_id="correction",
        label="The right answer",
        style=discord.TextStyle.paragraph,
        max_length=MAX_CORRECTION_CHARS,
        placeholder="Write the answer the bot should have given.",
    )

    def __init__(self, cog: FeedbackCog, answer: AnswerRecord, target: discord.Message) -> None:
        super().__init__()
        self.cog = cog
        self.answer = answer
        self.target = target

    async def on_submit(self, interaction: discord.Interaction, /) -> None:
        """Post the correction as a reply to the answer (the message others vote on), then record it."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        posted = await self.target.reply(
            f"Correction from {interaction.user.mention}:\n{self.text.value}"[:2000],
            mention_author=False,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        correction = await self.cog.record_correction(
            self.answer, interaction.user, self.text.value, posted, guild=interaction.guild
        )
        await interaction.followup.send(self.cog.describe(correction), ephemeral=True)


class FeedbackCog(commands.Cog):
    """Votes and corrections, recorded in the feedback log."""

    def __init__(self, bot: commands.Bot, services: Services) -> None:
        self.bot = bot
        self.services = services
        self.menu = app_commands.ContextMenu(name="Correct answer", callback=self.correct_answer)

    async def cog_load(self) -> None:
        """Register the context menu (it cannot be a decorated cog method) and the vote buttons."""
        self.bot.tree.add_command(self.menu)
        self.bot.add_dynamic_items(VoteButton)

    async def cog_unload(self) -> None:
        """Remove the context menu and the vote buttons with the cog."""
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)
        self.bot.remove_dynamic_items(VoteButton)

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
        answer = await asyncio.to_thread(self.log.answer_for_message, message_id)
        if answer is not None:
            value: Literal[1, -1] = 1 if emoji == settings.upvote_emoji else -1
            await asyncio.to_thread(self.log.set_vote, answer.id, user_id, value, present)
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
            trusted=voter is not None and self.trusted(answer, voter, guild),
            private=payload.guild_id is None,
        )
        if outcome is not None and outcome.newly_accepted:
            await self._mark(payload.channel_id, payload.message_id, ACCEPTED_EMOJI)

    # ------------------------------------------------------------------ corrections

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """A reply to a bot answer that does not mention the bot is a correction of that answer."""
        me = self.bot.user
        if me is None or message.author.bot or message.reference is None or me.id in message.raw_mentions:
            return
        target_id = message.reference.message_id
        if target_id is None or not message.content.strip():
            return
        answer = await asyncio.to_thread(self.log.answer_for_message, str(target_id))
        if answer is None:
            return  # a reply to someone else, or to a bot message that is not an answer
        await self.record_correction(
            answer, message.author, message.content.strip(), message, guild=message.guild
        )

    async def correct_answer(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Message menu "Correct answer": opens a form to write the right answer."""
        answer = await asyncio.to_thread(self.log.answer_for_message, str(message.id))
        if answer is None:
            await interaction.response.send_message(
                "That message is not one of my answers; use this on an answer I wrote.", ephemeral=True
            )
            return
        await interaction.response.send_modal(CorrectionModal(self, answer, message))

    def trusted(self, answer: AnswerRecord, user: discord.abc.User, guild: discord.Guild | None) -> bool:
        """The asker, curators and admins correct without needing votes."""
        member = guild.get_member(user.id) if guild is not None else None
        settings = self.services.settings.discord
        curator = any(has_role(member or user, role) for role in (settings.curator_role, settings.admin_role))
        return trusted_author(answer, str(user.id), holds_curator_role=curator)

    async def record_correction(
        self,
        answer: AnswerRecord,
        user: discord.abc.User,
        text: str,
        message: discord.Message,
        *,
        guild: discord.Guild | None,
    ) -> CorrectionRecord:
        """Record the correction (durable first), publish it if accepted, then acknowledge it."""
        outcome: CorrectionOutcome = await asyncio.to_thread(
            correct,
            self.log,
            self.services.knowledge_base,
            answer,
            author_id=str(user.id),
            text=text,
            message_id=str(message.id),
            trusted=self.trusted(answer, user, guild),
            votes_needed=self.services.settings.discord.correction_votes,
            private=message.guild is None,
        )
        await self._mark(message.channel.id, message.id, RECORDED_EMOJI)
        if outcome.newly_accepted:
            await self._mark(message.channel.id, message.id, ACCEPTED_EMOJI)
        return outcome.correction

    async def _mark(self, channel_id: int, message_id: int, emoji: str) -> None:
        channel = self.bot.get_channel(channel_id) or self.bot.get_partial_messageable(channel_id)
        try:
            await channel.get_partial_message(message_id).add_reaction(emoji)  # type: ignore[union-attr]
        except discord.HTTPException as error:
            log.warning("could not react %s: %s", emoji, error)

    def describe(self, correction: CorrectionRecord) -> str:
        """What happens next with a correction, in one sentence for its author."""
        if correction.accepted:
            return "Thanks! Your correction is accepted: it is a community post now and will train the next adapter."
        needed = self.services.settings.discord.correction_votes
        return f"Thanks! Your correction is recorded; it is accepted once {needed} members react 👍 to it."
