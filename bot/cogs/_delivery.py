"""Where an answer goes and how it is shown: a message that streams and splits, or an interaction's
responses (ephemeral ones included). Used by the ask cog; nothing here decides what to answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import discord


@dataclass
class Delivery:
    """Where an answer goes: ``edit(text)`` shows streamed text, ``post(pieces)`` the final one.

    ``post(pieces, view)`` puts ``view`` (if any) under the last piece and returns every message it
    wrote (their ids are logged against the answer).
    """

    edit: Callable[[str], Awaitable[Any]]
    post: Callable[[list[str], discord.ui.View | None], Awaitable[list[discord.Message]]]
    private: bool
    # The services' ids of answers being written: every message shown is in it until the answer is logged.
    pending: set[int]
    # Ephemeral answers cannot carry reactions: they get 👍/👎 buttons instead.
    buttons: bool = False
    messages: list[discord.Message] = field(default_factory=list)

    def track(self, message: discord.Message) -> None:
        """Remember a message this delivery wrote (once) and mark it as an answer being written."""
        if all(m.id != message.id for m in self.messages):
            self.messages.append(message)
        self.pending.add(message.id)

    def release(self) -> None:
        """The answer is logged (or failed): votes on its messages no longer wait."""
        for message in self.messages:
            self.pending.discard(message.id)


def message_delivery(
    target: discord.abc.Messageable, origin: discord.Message | None, private: bool, pending: set[int]
) -> Delivery:
    """Streaming into a message that replies to ``origin`` (or is sent to ``target``)."""
    delivery: Delivery

    async def send(text: str, view: discord.ui.View | None = None) -> discord.Message:
        # Every piece replies to the question, so a reply to any piece has the same chain above it.
        extra: dict[str, Any] = {"view": view} if view is not None else {}
        if origin is not None:
            sent = await origin.reply(text, mention_author=False, **extra)
        else:
            sent = await target.send(text, **extra)
        delivery.track(sent)
        return sent

    async def edit(text: str) -> None:
        if delivery.messages:
            await delivery.messages[0].edit(content=text)
        else:
            await send(text)

    async def post(pieces: list[str], view: discord.ui.View | None = None) -> list[discord.Message]:
        last = view if len(pieces) == 1 else None
        if not delivery.messages:
            await send(pieces[0], last)
        elif last is not None:
            await delivery.messages[0].edit(content=pieces[0], view=last)
        else:
            await delivery.messages[0].edit(content=pieces[0])
        for n, piece in enumerate(pieces[1:], 2):
            await send(piece, view if n == len(pieces) else None)
        return list(delivery.messages)

    delivery = Delivery(edit, post, private, pending)
    return delivery


def followup_poster(
    interaction: discord.Interaction,
) -> Callable[[list[str], discord.ui.View | None], Awaitable[list[discord.Message]]]:
    async def post(pieces: list[str], view: discord.ui.View | None = None) -> list[discord.Message]:
        return await followups(interaction, pieces, view, ephemeral=True)

    return post


async def followups(
    interaction: discord.Interaction, pieces: list[str], view: discord.ui.View | None, *, ephemeral: bool
) -> list[discord.Message]:
    """Send ``pieces`` as the interaction's follow-ups, ``view`` (if any) under the last one."""
    sent: list[discord.Message] = []
    for n, piece in enumerate(pieces, 1):
        if view is not None and n == len(pieces):
            sent.append(await interaction.followup.send(piece, ephemeral=ephemeral, wait=True, view=view))
        else:
            sent.append(await interaction.followup.send(piece, ephemeral=ephemeral, wait=True))
    return sent
