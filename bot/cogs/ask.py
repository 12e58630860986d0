"""Asking: mention the bot (a reply chain is the conversation) or use ``/ask``.

Privacy rule (README, "Knowledge, privacy and the bot": a member's personal records ground *their*
answers only). An answer that used the asker's personal records is never posted in the channel:

- ``/ask`` answers in an ephemeral response (only the asker sees it);
- a mention is answered in a DM, with a short public note saying so.

Before streaming, the cog asks the answer service's own retrieval whether this question brings
back any of the asker's personal records (``/ask`` must acknowledge within 3 s, so a slow check
counts as "yes"); the final answer's sources are then checked again, and a public message that turns
out to rest on personal sources is replaced by the note. The sources list of a private answer names
only the asker's own records. Ephemeral answers cannot carry reactions, so they get 👍/👎 buttons.
The rule errs towards privacy: on a small knowledge base a member's few records are retrieved for
most questions, so most of that member's answers come privately.

In a DM, a message that is not a reply is a question (there is no server, so nothing is retrieved).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from adapters.serving import ACTIVE
from bot.cogs._common import (
    ChannelOrder,
    StreamingEditor,
    channel_refusal,
    format_answer,
    split_message,
    strip_mentions,
)
from bot.cogs._delivery import Delivery, followup_poster, followups, message_delivery
from bot.cogs._views import answer_view
from bot.usecases.asking import Asker, record_answer, uses_personal
from bot.usecases.errors import user_errors
from bot.usecases.limits import RateLimiter

if TYPE_CHECKING:
    from bot.services import Services
    from knowledge.chain import Answer

log = logging.getLogger(__name__)

# How many messages of a reply chain become the conversation history.
MAX_HISTORY_MESSAGES = 12
MAX_CACHED_NODES = 1000
# Discord voids an interaction not acknowledged within 3 s; the privacy probe must fit before that.
PROBE_TIMEOUT = 2.0
PRIVATE_NOTE = "Only you can see this answer: it uses your personal records."
DM_NOTE = "This answer uses your personal records, so I sent it to you in a direct message."
NO_DM_NOTE = "This answer uses your personal records and I could not DM you. Use `/ask` to get it privately."
PLACEHOLDER = "…"  # the answer's first message, posted in arrival order; the answer streams into it


class AskCog(commands.Cog):
    """Answers questions with the answer service, streaming, citing sources and logging each answer."""

    def __init__(self, bot: commands.Bot, services: Services) -> None:
        self.bot = bot
        self.services = services
        settings = services.settings.discord
        self.order = ChannelOrder()
        self.limiter = RateLimiter(settings.rate_limit_per_minute)
        # message id -> (role, text, parent id): a reply chain is read once, like llmcord's node cache.
        self._nodes: dict[int, tuple[str, str, int | None]] = {}

    # ------------------------------------------------------------------ entry points

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """A question: a message that mentions the bot, a reply to one of the bot's messages (a
        follow-up: the reply chain is the conversation), or any message in a DM.

        A reply is never a correction: corrections are explicit (✏️ or the "Correct answer" menu)."""
        me = self.bot.user
        if me is None or message.author.bot:
            return
        direct = isinstance(message.channel, discord.DMChannel)
        if me.id not in message.raw_mentions and not direct and not await self._replies_to_me(message):
            return
        question = strip_mentions(message.content, me.id)
        if not question:
            await message.reply(
                "Ask me something after the mention, e.g. `@loopbot how often should cats eat?`",
                mention_author=False,
            )
            return
        refusal = self.refusal(message.author, message.channel) or self.too_long(question)
        if refusal:
            await message.reply(refusal, mention_author=False)
            return
        if message.guild is not None:  # a first question in a server gets the privacy note (privacy cog)
            self.bot.dispatch("loopbot_member_active", message.author, message.guild.id)
        async with message.channel.typing():
            history = await self.history(message)
            # Only the first message of each answer goes out in arrival order; the answers themselves
            # are written together (the runtime batches them) and stream into those messages.
            async with self.order.lock(message.channel.id):
                delivery = await self._open_answer(message, question)
            if delivery is not None:
                await self._answer_message(message, question, history, delivery)

    @app_commands.command(name="ask", description="Ask loopbot a question about this community.")
    @app_commands.describe(question="Your question", private="Only you see the answer (default: no)")
    async def ask(self, interaction: discord.Interaction, question: str, private: bool = False) -> None:
        """``/ask question: [private:]``: the answer streams into the command's response."""
        question = question.strip()
        refusal = self.refusal(interaction.user, interaction.channel) or self.too_long(question)
        if refusal:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        private = private or await self._retrieves_personal(
            question, interaction.user.id, interaction.guild_id, timeout=PROBE_TIMEOUT
        )
        await interaction.response.defer(thinking=True, ephemeral=private)

        async def edit(text: str) -> None:
            shown = await interaction.edit_original_response(content=text)
            delivery.track(shown)

        async def post(pieces: list[str], view: discord.ui.View | None = None) -> list[discord.Message]:
            first: discord.Message
            if view is not None and len(pieces) == 1:
                first = await interaction.edit_original_response(content=pieces[0], view=view)
            else:
                first = await interaction.edit_original_response(content=pieces[0])
            return [first, *await followups(interaction, pieces[1:], view, ephemeral=private)]

        delivery = Delivery(edit, post, private, self.services.pending_answers, buttons=private)
        # The deferred response already holds the answer's place in the channel: no need to wait.
        channel_id = interaction.channel_id or 0
        answer = await self._generate(question, interaction.user, interaction.guild_id, (), delivery)
        if answer is None:
            delivery.release()
            return
        if uses_personal(answer.sources) and not private:
            # The probe missed: never leave personal sources in public. Hide it, deliver privately.
            await interaction.edit_original_response(
                content=DM_NOTE.replace("in a direct message", "privately")
            )
            delivery.release()
            delivery = Delivery(
                edit,
                followup_poster(interaction),
                True,
                self.services.pending_answers,
                buttons=True,
            )
        await self._finish(answer, delivery, interaction.user, interaction.guild_id, channel_id)

    # ------------------------------------------------------------------ guards

    def refusal(self, user: discord.abc.User, channel: Any) -> str:
        """Why this member may not ask here right now ('' when they may)."""
        settings = self.services.settings.discord
        refusal = channel_refusal(channel, settings.allowed_channels)
        if refusal:
            return refusal
        wait = self.limiter.check(str(user.id))
        if wait:
            return (
                f"You're asking faster than {settings.rate_limit_per_minute} questions a minute. "
                f"Try again in {int(wait) + 1} s."
            )
        return ""

    def too_long(self, question: str) -> str:
        """Why a question is refused for its length ('' when it is short enough)."""
        limit = self.services.settings.discord.max_question_chars
        if len(question) <= limit:
            return ""
        return f"That question is {len(question)} characters long; I take up to {limit}. Please shorten it."

    # ------------------------------------------------------------------ the conversation

    async def _replies_to_me(self, message: discord.Message) -> bool:
        """Whether ``message`` replies to one of the bot's own messages (reads the parent once, cached)."""
        reference = message.reference
        if reference is None or reference.message_id is None:
            return False
        node = await self._node(message.channel, reference.message_id, reference)
        return node is not None and node[0] == "assistant"

    async def _node(
        self, channel: Any, message_id: int, reference: discord.MessageReference | None
    ) -> tuple[str, str, int | None] | None:
        """One message of a reply chain as ``(role, text, parent id)``, from the node cache or Discord."""
        node = self._nodes.get(message_id)
        if node is None:
            node = await self._read_node(channel, message_id, reference)
            if node is None:
                return None
            self._nodes[message_id] = node
            if len(self._nodes) > MAX_CACHED_NODES:
                del self._nodes[next(iter(self._nodes))]  # the oldest entry
        return node

    async def history(self, message: discord.Message) -> list[dict[str, str]]:
        """The reply chain above ``message``, oldest first, as chat turns (bot turns: its clean answer)."""
        turns: list[dict[str, str]] = []
        parent_id = message.reference.message_id if message.reference else None
        while parent_id is not None and len(turns) < MAX_HISTORY_MESSAGES:
            node = await self._node(message.channel, parent_id, message.reference)
            if node is None:
                break
            role, text, parent_id = node
            if text:
                turns.append({"role": role, "content": text})
        return list(reversed(turns))

    async def _read_node(
        self, channel: Any, message_id: int, reference: discord.MessageReference | None
    ) -> tuple[str, str, int | None] | None:
        resolved = reference.resolved if reference and reference.message_id == message_id else None
        try:
            parent = (
                resolved if isinstance(resolved, discord.Message) else await channel.fetch_message(message_id)
            )
        except discord.HTTPException:
            return None
        grand = parent.reference.message_id if parent.reference else None
        me = self.bot.user
        if me is not None and parent.author.id == me.id:
            record = await asyncio.to_thread(self.services.feedback_log.answer_for_message, str(parent.id))
            # The logged answer is the model's own words, without the sources list we appended.
            return ("assistant", record.answer if record else parent.content, grand)
        return ("user", strip_mentions(parent.content, me.id if me else 0), grand)

    # ------------------------------------------------------------------ answering

    async def _open_answer(self, message: discord.Message, question: str) -> Delivery | None:
        """Decide where the answer goes and post its first message (a placeholder the answer streams
        into); None when it cannot be delivered (a DM the member does not accept, said in public)."""
        guild_id = message.guild.id if message.guild else None
        private = isinstance(message.channel, discord.DMChannel) or await self._retrieves_personal(
            question, message.author.id, guild_id
        )
        public_note: discord.Message | None = None
        if private and not isinstance(message.channel, discord.DMChannel):
            public_note = await message.reply(DM_NOTE, mention_author=False)
            target: discord.abc.Messageable = message.author
        else:
            target = message.channel
        delivery = message_delivery(
            target, message if target is message.channel else None, private, self.services.pending_answers
        )
        try:
            await delivery.edit(PLACEHOLDER)
        except discord.Forbidden:
            delivery.release()
            if public_note is not None:
                await public_note.edit(content=NO_DM_NOTE)
            return None
        return delivery

    async def _answer_message(
        self, message: discord.Message, question: str, history: list[dict[str, str]], delivery: Delivery
    ) -> None:
        guild_id = message.guild.id if message.guild else None
        private = delivery.private
        answer = await self._generate(question, message.author, guild_id, history, delivery)
        if answer is None:
            delivery.release()
            return
        if uses_personal(answer.sources) and not private:
            # The probe missed: take the streamed text down and deliver in a DM instead.
            for sent in delivery.messages:
                await sent.edit(content=DM_NOTE)
            delivery.release()
            delivery = message_delivery(message.author, None, True, self.services.pending_answers)
        try:
            await self._finish(answer, delivery, message.author, guild_id, message.channel.id)
        except discord.Forbidden:
            await message.reply(NO_DM_NOTE, mention_author=False)

    async def _retrieves_personal(
        self, question: str, user_id: int, guild_id: int | None, *, timeout: float | None = None
    ) -> bool:
        """Whether retrieval for this question returns any of the asker's personal records.

        With ``timeout`` (``/ask`` must acknowledge within 3 s), a slow probe counts as "yes":
        when in doubt, answer privately.
        """
        probe = self.services.personal_probe
        if probe is None or guild_id is None:
            return False
        check = asyncio.to_thread(probe, question, str(user_id), str(guild_id))
        try:
            return bool(await asyncio.wait_for(check, timeout))
        except TimeoutError:
            log.warning("privacy probe took over %.1f s; answering privately", timeout)
            return True

    async def _generate(
        self,
        question: str,
        user: discord.abc.User,
        guild_id: int | None,
        history: Sequence[dict[str, str]],
        delivery: Delivery,
    ) -> Answer | None:
        """Run the answer service, streaming into ``delivery``; None (and a reply) when it failed."""
        loop = asyncio.get_running_loop()
        editor = StreamingEditor(delivery.edit, self.services.settings.discord.edit_interval, loop)
        streaming = asyncio.create_task(editor.run())
        guild = str(guild_id) if guild_id is not None else None
        adapters = self.services.adapters
        try:
            # Each server is answered with its own adapter (a DM has no server: the base model); an
            # answer only the asker sees also gets their own adapter, trained on their personal pairs.
            member = str(user.id) if delivery.private else None
            adapter = (
                await asyncio.to_thread(adapters.choice_for, guild, member)
                if adapters is not None
                else ACTIVE
            )
            return await self.services.answer_service.aanswer(
                question,
                user_id=str(user.id),
                guild_id=guild,
                history=tuple(history),
                on_token=editor.feed,
                adapter=adapter,
            )
        except user_errors() as error:
            log.warning("answer failed: %s", error)
            await delivery.post([f"Sorry, I could not answer: {error}"], None)
            return None
        finally:
            await editor.stop(streaming)

    async def _finish(
        self,
        answer: Answer,
        delivery: Delivery,
        user: discord.abc.User,
        guild_id: int | None,
        channel_id: int,
    ) -> int:
        """Log the answer (durably, first), post its final text with sources, attach the message ids."""
        log_ = self.services.feedback_log
        asker = Asker(str(user.id), str(guild_id) if guild_id is not None else None, str(channel_id))
        answer_id = await asyncio.to_thread(
            record_answer, log_, answer, asker, delivered_privately=delivery.private
        )
        # The streamed message already exists: attach it now, so a vote cast from here on counts.
        await asyncio.to_thread(log_.add_message_ids, answer_id, [str(m.id) for m in delivery.messages])
        note = PRIVATE_NOTE if delivery.private and uses_personal(answer.sources) else ""
        settings = self.services.settings.discord
        votes = (settings.upvote_emoji, settings.downvote_emoji) if delivery.buttons else None
        pieces = split_message(format_answer(answer.answer, answer.sources, note=note))
        try:
            sent = await delivery.post(pieces, answer_view(answer_id, votes=votes))
            await asyncio.to_thread(log_.add_message_ids, answer_id, [str(m.id) for m in sent])
            self.bot.dispatch("loopbot_answer", answer_id, sent)
        finally:
            delivery.release()
        return answer_id
