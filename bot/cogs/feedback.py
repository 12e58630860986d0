"""Feedback: 👍/👎 on answers, corrections by reply or by the "Correct answer" message menu.

A reply to a bot answer that does not mention the bot is a correction. It is trusted (accepted at
once) when its author asked the question or holds the curator role; otherwise it is accepted when
``correction_votes`` other members react 👍 to it. An accepted correction becomes a community post,
retrievable at once. Every record is durable before the bot acknowledges it with a reaction.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs._common import has_role

if TYPE_CHECKING:
    from bot.discord_app import LoopBot

log = logging.getLogger(__name__)

RECORDED_EMOJI = "📝"
ACCEPTED_EMOJI = "✅"
MAX_CORRECTION_CHARS = 4000


def correction_chunk(correction: Any, answer: Any, *, private: bool = False) -> Any:
    """The post an accepted correction becomes: the question and the corrected answer.

    A correction of a private answer (one delivered in a DM because it used the asker's personal
    records) may repeat those records, so it becomes the asker's personal record, not a community post.
    """
    from knowledge.types import Chunk

    return Chunk(
        id=f"correction-{correction.id}",
        text=f"Question: {answer.question}\nAnswer: {correction.text}",
        source=f"correction #{correction.id}",
        scope="personal" if private else "community",
        guild_id=answer.guild_id,
        owner_id=answer.user_id if private else None,
        author=correction.author_id,
        timestamp=correction.created_at.isoformat() if correction.created_at else None,
    )


class VoteButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"loopbot:vote:(?P<answer>[0-9]+):(?P<value>-?1)"
):
    """👍/👎 buttons under a private (ephemeral) answer, which cannot carry reactions.

    The answer id lives in the button's custom id, so the buttons keep working after a restart.
    Pressing the same button again takes the vote back, like removing a reaction.
    """

    def __init__(self, answer_id: int, value: int, emoji: str) -> None:
        super().__init__(
            discord.ui.Button(
                emoji=emoji,
                style=discord.ButtonStyle.secondary,
                custom_id=f"loopbot:vote:{answer_id}:{value}",
            )
        )
        self.answer_id = answer_id
        self.value = value

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any, /
    ) -> VoteButton:
        """Rebuild the button from its custom id (discord.py calls this on every click)."""
        return cls(int(match["answer"]), int(match["value"]), str(getattr(item, "emoji", "") or ""))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Record the vote (a repeat takes it back) and say so privately."""
        bot = interaction.client
        log_ = bot.services.feedback_log  # type: ignore[attr-defined]
        user_id = str(interaction.user.id)
        result = await asyncio.to_thread(log_.set_vote, self.answer_id, user_id, self.value, True)
        if not result.changed:
            await asyncio.to_thread(log_.set_vote, self.answer_id, user_id, self.value, False)
        emoji = "👍" if self.value == 1 else "👎"
        text = f"Thanks, your {emoji} is recorded." if result.changed else f"Your {emoji} is taken back."
        await interaction.response.send_message(text, ephemeral=True)


def vote_view(answer_id: int, upvote: str, downvote: str) -> discord.ui.View:
    """The 👍/👎 buttons for one private answer."""
    view = discord.ui.View(timeout=None)
    view.add_item(VoteButton(answer_id, 1, upvote))
    view.add_item(VoteButton(answer_id, -1, downvote))
    return view


class CorrectionModal(discord.ui.Modal, title="Correct this answer"):
    """The form behind the "Correct answer" message command."""

    text: discord.ui.TextInput[CorrectionModal] = discord.ui.TextInput(
        custom_id="correction",
        label="The right answer",
        style=discord.TextStyle.paragraph,
        max_length=MAX_CORRECTION_CHARS,
        placeholder="Write the answer the bot should have given.",
    )

    def __init__(self, cog: FeedbackCog, answer: Any, target: discord.Message) -> None:
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

    def __init__(self, bot: LoopBot) -> None:
        self.bot = bot
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
    def log(self) -> Any:
        """The feedback log."""
        return self.bot.services.feedback_log

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
        settings = self.bot.services.settings.discord
        me = self.bot.user
        if me is None or payload.user_id == me.id:
            return
        emoji = str(payload.emoji)
        if emoji not in (settings.upvote_emoji, settings.downvote_emoji):
            return
        message_id, user_id = str(payload.message_id), str(payload.user_id)
        answer = await asyncio.to_thread(self.log.answer_for_message, message_id)
        if answer is not None:
            value = 1 if emoji == settings.upvote_emoji else -1
            await asyncio.to_thread(self.log.set_vote, answer.id, user_id, value, present)
            return
        if emoji != settings.upvote_emoji:
            return
        correction = await asyncio.to_thread(self.log.correction_for_message, message_id)
        if correction is None or correction.author_id == user_id:
            return
        was_accepted = correction.accepted
        answer = await asyncio.to_thread(self.log.get_answer, correction.answer_id)
        if answer is None:
            return
        guild = self.bot.get_guild(payload.guild_id) if payload.guild_id else None
        voter = payload.member or (guild.get_member(payload.user_id) if guild else None)
        correction = await asyncio.to_thread(
            self.log.set_correction_vote,
            correction.id,
            user_id,
            present,
            votes_needed=settings.correction_votes,
            # The asker's or a curator's 👍 accepts a stranger's correction at once.
            trusted=voter is not None and self.trusted(answer, voter, guild),
        )
        if correction.accepted and not was_accepted:
            await self._publish(correction, answer, private=payload.guild_id is None)
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

    def trusted(self, answer: Any, user: discord.abc.User, guild: discord.Guild | None) -> bool:
        """The asker, curators and admins correct without needing votes."""
        if str(user.id) == answer.user_id:
            return True
        member = guild.get_member(user.id) if guild is not None else None
        settings = self.bot.services.settings.discord
        return any(has_role(member or user, role) for role in (settings.curator_role, settings.admin_role))

    async def record_correction(
        self, answer: Any, user: discord.abc.User, text: str, message: discord.Message, *, guild: Any
    ) -> Any:
        """Record the correction (durable first), publish it if accepted, then acknowledge it."""
        settings = self.bot.services.settings.discord
        correction = await asyncio.to_thread(
            self.log.add_correction,
            answer.id,
            author_id=str(user.id),
            text=text,
            message_id=str(message.id),
            trusted=self.trusted(answer, user, guild),
            votes_needed=settings.correction_votes,
        )
        await self._mark(message.channel.id, message.id, RECORDED_EMOJI)
        if correction.accepted:
            await self._publish(correction, answer, private=message.guild is None)
            await self._mark(message.channel.id, message.id, ACCEPTED_EMOJI)
        return correction

    async def _publish(self, correction: Any, answer: Any, *, private: bool) -> None:
        """An accepted correction becomes a post, found by the very next question."""
        chunk = correction_chunk(correction, answer, private=private)
        await asyncio.to_thread(self.bot.services.knowledge_base.add, [chunk])

    async def _mark(self, channel_id: int, message_id: int, emoji: str) -> None:
        channel = self.bot.get_channel(channel_id) or self.bot.get_partial_messageable(channel_id)
        try:
            await channel.get_partial_message(message_id).add_reaction(emoji)  # type: ignore[union-attr]
        except discord.HTTPException as error:
            log.warning("could not react %s: %s", emoji, error)

    def describe(self, correction: Any) -> str:
        """What happens next with a correction, in one sentence for its author."""
        if correction.accepted:
            return "Thanks! Your correction is accepted: it is a community post now and will train the next adapter."
        needed = self.bot.services.settings.discord.correction_votes
        return f"Thanks! Your correction is recorded; it is accepted once {needed} members react 👍 to it."
