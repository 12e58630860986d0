"""Components shared by the cogs: the 👍/👎 buttons under answers that cannot carry reactions."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal, cast

import discord

from bot.usecases.feedback import toggle_vote

if TYPE_CHECKING:
    from bot.services import HasServices


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
        services = cast("HasServices", interaction.client).services
        value: Literal[1, -1] = 1 if self.value == 1 else -1
        recorded = await asyncio.to_thread(
            toggle_vote, services.feedback_log, self.answer_id, str(interaction.user.id), value
        )
        emoji = "👍" if value == 1 else "👎"
        text = f"Thanks, your {emoji} is recorded." if recorded else f"Your {emoji} is taken back."
        await interaction.response.send_message(text, ephemeral=True)


def vote_view(answer_id: int, upvote: str, downvote: str) -> discord.ui.View:
    """The 👍/👎 buttons for one private answer."""
    view = discord.ui.View(timeout=None)
    view.add_item(VoteButton(answer_id, 1, upvote))
    view.add_item(VoteButton(answer_id, -1, downvote))
    return view
