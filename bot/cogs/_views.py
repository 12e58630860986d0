"""The components under answers and the correction flow they share with the message menu.

Every answer carries a ✏️ button (a correction is always an explicit act: this button or the
"Correct answer" message menu; a plain reply continues the conversation). Answers that cannot carry
reactions (ephemeral ones) also get 👍/👎 buttons. The answer id lives in each button's custom id,
so the buttons keep working after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Literal, cast

import discord

from bot.cogs._common import has_role
from bot.usecases.feedback import correct, toggle_vote, trusted_author

if TYPE_CHECKING:
    from bot.services import HasServices, Services
    from feedback.records import AnswerRecord, CorrectionRecord

log = logging.getLogger(__name__)

RECORDED_EMOJI = "📝"
ACCEPTED_EMOJI = "✅"
CORRECT_EMOJI = "✏️"
MAX_CORRECTION_CHARS = 4000


def _services(interaction: discord.Interaction) -> Services:
    """The services of the bot that received ``interaction`` (``LoopBot`` carries them)."""
    return cast("HasServices", interaction.client).services


class VoteButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"loopbot:vote:(?P<answer>[0-9]+):(?P<value>-?1)"
):
    """👍/👎 under a private (ephemeral) answer; pressing the same button again takes the vote back."""

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
        value: Literal[1, -1] = 1 if self.value == 1 else -1
        recorded = await asyncio.to_thread(
            toggle_vote, _services(interaction).feedback_log, self.answer_id, str(interaction.user.id), value
        )
        emoji = "👍" if value == 1 else "👎"
        text = f"Thanks, your {emoji} is recorded." if recorded else f"Your {emoji} is taken back."
        await interaction.response.send_message(text, ephemeral=True)


class CorrectButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"loopbot:correct:(?P<answer>[0-9]+)"
):
    """✏️ under every answer: opens the correction form for that answer."""

    def __init__(self, answer_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                emoji=CORRECT_EMOJI,
                label="Correct",
                style=discord.ButtonStyle.secondary,
                custom_id=f"loopbot:correct:{answer_id}",
            )
        )
        self.answer_id = answer_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any, /
    ) -> CorrectButton:
        """Rebuild the button from its custom id."""
        return cls(int(match["answer"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Open the form (or say the answer is gone, e.g. after its asker used /forget)."""
        answer = await asyncio.to_thread(_services(interaction).feedback_log.get_answer, self.answer_id)
        if answer is None or interaction.message is None:
            await interaction.response.send_message("That answer is no longer in my log.", ephemeral=True)
            return
        await interaction.response.send_modal(CorrectionModal(answer, interaction.message))


def answer_view(answer_id: int, *, votes: tuple[str, str] | None = None) -> discord.ui.View:
    """The buttons under one answer: ✏️, and 👍/👎 (``votes``: their emoji) where reactions are impossible."""
    view = discord.ui.View(timeout=None)
    if votes is not None:
        view.add_item(VoteButton(answer_id, 1, votes[0]))
        view.add_item(VoteButton(answer_id, -1, votes[1]))
    view.add_item(CorrectButton(answer_id))
    return view


class CorrectionModal(discord.ui.Modal, title="Correct this answer"):
    """The form behind ✏️ and the "Correct answer" message menu."""

    text: discord.ui.TextInput[CorrectionModal] = discord.ui.TextInput(
        custom_id="correction",
        label="The right answer",
        style=discord.TextStyle.paragraph,
        max_length=MAX_CORRECTION_CHARS,
        placeholder="Write the answer the bot should have given.",
    )

    def __init__(self, answer: AnswerRecord, target: discord.Message) -> None:
        super().__init__()
        self.answer = answer
        self.target = target

    async def on_submit(self, interaction: discord.Interaction, /) -> None:
        """A public answer: post the correction as a reply to it (the message others vote on), then
        record it. A private answer (ephemeral, DM): record it, and show it to its author only."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        services = _services(interaction)
        refusal = services.limits.correction(str(interaction.user.id))
        if refusal:
            await interaction.followup.send(refusal, ephemeral=True)
            return
        private = self.answer.private or interaction.guild is None or bool(self.target.flags.ephemeral)
        posted = None
        if not private:
            posted = await self.target.reply(
                f"Correction from {interaction.user.mention}:\n{self.text.value}"[:2000],
                mention_author=False,
                allowed_mentions=discord.AllowedMentions.none(),
            )
        correction = await record_correction(
            services, interaction.client, self.answer, interaction.user, self.text.value, posted,
            guild=interaction.guild, private=private,
        )  # fmt: skip
        await interaction.followup.send(describe(correction, services), ephemeral=True)


def trusted(
    services: Services, answer: AnswerRecord, user: discord.abc.User, guild: discord.Guild | None
) -> bool:
    """The asker, curators and admins correct without needing votes."""
    member = guild.get_member(user.id) if guild is not None else None
    settings = services.settings.discord
    curator = any(has_role(member or user, role) for role in (settings.curator_role, settings.admin_role))
    return trusted_author(answer, str(user.id), holds_curator_role=curator)


async def record_correction(
    services: Services,
    client: discord.Client,
    answer: AnswerRecord,
    user: discord.abc.User,
    text: str,
    posted: discord.Message | None,
    *,
    guild: discord.Guild | None,
    private: bool,
) -> CorrectionRecord:
    """Record the correction (durable first) and publish it if accepted, then mark ``posted``
    (the public correction message, if any) 📝 and, once accepted, ✅."""
    outcome = await asyncio.to_thread(
        correct,
        services.feedback_log,
        services.knowledge_base,
        answer,
        author_id=str(user.id),
        text=text,
        message_id=str(posted.id) if posted is not None else None,
        trusted=trusted(services, answer, user, guild),
        votes_needed=services.settings.discord.correction_votes,
        private=private,
    )
    if posted is not None:
        await mark(client, posted.channel.id, posted.id, RECORDED_EMOJI)
        if outcome.newly_accepted:
            await mark(client, posted.channel.id, posted.id, ACCEPTED_EMOJI)
    return outcome.correction


async def mark(client: discord.Client, channel_id: int, message_id: int, emoji: str) -> None:
    """React ``emoji`` on a message (an acknowledgement: a failure is logged, never raised)."""
    channel = client.get_channel(channel_id) or client.get_partial_messageable(channel_id)
    try:
        await channel.get_partial_message(message_id).add_reaction(emoji)  # type: ignore[union-attr]
    except discord.HTTPException as error:
        log.warning("could not react %s: %s", emoji, error)


def describe(correction: CorrectionRecord, services: Services) -> str:
    """What happens next with a correction, in one sentence for its author."""
    if correction.accepted and correction.private:
        return "Thanks! Your correction is saved to your own records; only your answers use it."
    if correction.accepted:
        return (
            "Thanks! Your correction is accepted: it is a community post now and will train the next adapter."
        )
    needed = services.settings.discord.correction_votes
    return f"Thanks! Your correction is recorded; it is accepted once {needed} members react 👍 to it."
