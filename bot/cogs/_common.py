"""Pure helpers shared by the cogs: message splitting, source lists, guards and per-channel order.

Nothing here talks to Discord's API; these are the rules a cog applies before and after it calls a
service, kept apart so they read (and test) on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import discord

log = logging.getLogger(__name__)

# Discord rejects message content over 2000 characters.
MESSAGE_LIMIT = 2000
# The note that replaces a streamed answer while the model is still writing.
WRITING_MARK = " …"


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` characters, preferring line, then word breaks."""
    text = text.strip()
    if not text:
        return [""]
    pieces: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit + 1)
        if cut < limit // 2:
            cut = text.rfind(" ", 0, limit + 1)
        if cut < limit // 2:
            cut = limit  # one very long word: a hard cut is the only option
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    pieces.append(text)
    return pieces


def source_label(source: Any) -> str:
    """A short, human label for one retrieved source (its file/post name, page and section, and scope)."""
    cite = getattr(source, "citation", None)
    name = str(
        cite() if callable(cite) else getattr(source, "source", "") or getattr(source, "id", "") or "source"
    )
    scope = str(getattr(source, "scope", "") or "")
    return f"{name} ({scope})" if scope else name


def format_answer(text: str, sources: Sequence[Any], *, note: str = "") -> str:
    """The final message body: the answer, then numbered sources, then an optional note."""
    body = text.strip() or "(no answer)"
    if sources:
        lines = [f"[{number}] {source_label(source)}" for number, source in enumerate(sources, 1)]
        body += "\n\n**Sources**\n" + "\n".join(lines)
    if note:
        body += f"\n\n_{note}_"
    return body


def strip_mentions(content: str, user_id: int) -> str:
    """The message text without the bot's mention (both ``<@id>`` and ``<@!id>`` forms)."""
    return content.replace(f"<@{user_id}>", "").replace(f"<@!{user_id}>", "").strip()


def has_role(member: discord.abc.User | None, role_name: str) -> bool:
    """True when ``member`` holds a role called ``role_name`` (guild administrators always do)."""
    if not isinstance(member, discord.Member):
        return False
    if member.guild_permissions.administrator:
        return True
    return any(role.name == role_name for role in member.roles)


def channel_allowed(channel_id: int | None, allowed: Sequence[int], parent_id: int | None = None) -> bool:
    """True when the bot may act in this channel (an empty allow-list means every channel)."""
    if not allowed:
        return True
    return channel_id in allowed or (parent_id is not None and parent_id in allowed)


def channel_refusal(channel: Any, allowed: Sequence[int]) -> str:
    """Why the bot does not work in ``channel`` ('' when it does): DMs and threads of an allowed
    channel are fine, and an empty allow-list allows every channel."""
    if channel is None or isinstance(channel, discord.DMChannel):
        return ""
    if channel_allowed(getattr(channel, "id", None), allowed, getattr(channel, "parent_id", None)):
        return ""
    return f"I only work in {', '.join(f'<#{cid}>' for cid in allowed)}."


class ChannelOrder:
    """One FIFO lock per channel: answers in a channel start (post their first message) in the order
    the questions arrived.

    ``asyncio.Lock`` wakes waiters first-come first-served, so a lock per channel is a queue; it is
    held only while an answer's first message is posted, and the answers are then written together
    (the model runtime batches them).
    """

    def __init__(self) -> None:
        self._locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    def lock(self, channel_id: int) -> asyncio.Lock:
        """The lock that orders work in ``channel_id``."""
        return self._locks[channel_id]


class StreamingEditor:
    """Shows a growing answer by editing one message at most once per ``interval`` seconds.

    ``feed`` may be called from any thread (the runtime streams tokens from its worker); the edits
    themselves always run on the event loop. ``edit`` receives the text to show.
    """

    def __init__(self, edit: Callable[[str], Any], interval: float, loop: asyncio.AbstractEventLoop) -> None:
        self._edit = edit
        self._interval = interval
        self._loop = loop
        self._text = ""
        self._shown = ""
        self._changed = asyncio.Event()
        self._closed = False
        self._editing = False
        self.edits = 0

    def feed(self, token: str) -> None:
        """Append a streamed piece of text (thread-safe)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._push(token)
        else:
            self._loop.call_soon_threadsafe(self._push, token)

    def _push(self, token: str) -> None:
        self._text += token
        self._changed.set()

    async def run(self) -> None:
        """Edit the message whenever new text arrived, pausing ``interval`` between edits."""
        while not self._closed:
            await self._changed.wait()
            self._changed.clear()
            if self._closed:
                return
            partial = self._text.strip()
            if partial and partial != self._shown:
                # Only the first piece of a long answer streams; the rest is posted at the end.
                shown = split_message(partial)[0][: MESSAGE_LIMIT - len(WRITING_MARK)] + WRITING_MARK
                self._editing = True
                try:
                    await self._edit(shown)
                    self.edits += 1
                except discord.HTTPException as error:
                    # A failed intermediate edit is cosmetic; the final text is posted anyway.
                    log.warning("streamed edit failed: %s", error)
                finally:
                    self._editing = False
                self._shown = partial
            await asyncio.sleep(self._interval)

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop editing and wait for ``task`` (this editor's :meth:`run`); an edit in flight finishes."""
        self._closed = True
        self._changed.set()
        if not self._editing:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
