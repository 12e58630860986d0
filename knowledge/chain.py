"""The answer chain: retrieve → prompt with numbered passages → generate → answer + sources.

The model runtime is injected (``adapters.serving.ModelRuntime`` or anything with ``generate``,
``agenerate`` and ``count_tokens``); the prompt layout comes from :mod:`adapters.prompt`, which
training and the gate use too. The context block is kept exactly as it was put in the prompt,
because the learning loop stores it as the Alpaca ``input`` of a training pair.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from adapters.prompt import (
    DEFAULT_SYSTEM_PROMPT,
    PROMPT_VERSION,
    compose_answer,
    finish_answer,
    format_context,
    passage_block,
    plain_transcript,
    question_messages,
    with_system,
)
from adapters.serving import ACTIVE, AdapterChoice, Route
from knowledge.errors import KnowledgeError
from knowledge.evidence import is_grounded, is_japanese, is_non_answer, passage_scores, repeats_question
from knowledge.questions import general_only, is_general, missing_names
from knowledge.quoting import Quote, choose_quote, correction_answer
from knowledge.types import Chunk, Hit, citation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A passage the answer was grounded on; its position in ``Answer.sources`` is its [number]."""

    id: str
    source: str
    scope: str
    text: str
    section: str | None = None  # the heading the passage is under
    page: int | None = None  # a PDF's page

    @classmethod
    def of(cls, chunk: Chunk) -> Source:
        """The source a retrieved chunk is cited as."""
        return cls(chunk.id, chunk.source, chunk.scope, chunk.text, chunk.section, chunk.page)

    def citation(self) -> str:
        """Where the passage is: ``wiki.md › Membership`` (source, page, section)."""
        return citation(self.source, self.section, self.page)

    def to_dict(self) -> dict[str, Any]:
        """``{"id", "source", "scope", "text"}``, plus ``section`` and ``page`` when the passage has them."""
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class Answer:
    """A generated answer with everything the feedback log needs to turn it into a training pair."""

    answer: str
    sources: list[Source]
    adapter: str | None
    question: str
    context: str  # the numbered passages exactly as put in the prompt (the Alpaca ``input``)
    chunk_ids: list[str] = field(default_factory=list)
    prompt: str = ""
    prompt_version: str = PROMPT_VERSION

    def to_json(self) -> dict[str, Any]:
        """``{"answer", "sources": [{id, source, scope, text}], "adapter"}`` for the CLI and the bot."""
        return {
            "answer": self.answer,
            "sources": [s.to_dict() for s in self.sources],
            "adapter": self.adapter,
        }


class _Prepared(NamedTuple):
    """A question made ready to answer: the passages used, the chat, the context block, the quote."""

    question: str
    used: list[Hit]
    messages: list[dict[str, str]]
    context: str
    quote: Quote | None


class AnswerService:
    """Answers questions from the knowledge base with the model runtime; the CLI and the bot share it."""

    def __init__(
        self,
        kb: Any | None,
        runtime: Any,
        *,
        top_k: int = 5,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        max_context_tokens: int = 1024,
        min_relevance: float = 0.0,
        relevance_margin: float | None = None,
        max_passages: int | None = None,
        max_sentences: int = 0,
        quote_evidence: bool = False,
        route: Route | None = None,
    ) -> None:
        if top_k < 1:
            raise KnowledgeError(f"top_k must be at least 1, got {top_k}")
        self.kb = kb
        self.runtime = runtime
        self.top_k = top_k
        self.system_prompt = system_prompt
        self.max_context_tokens = max_context_tokens
        # Only passages that help: a dense cosine floor (lexical matches pass: the embedder is weak on
        # non-Latin scripts), none far below the best, and at most this many.
        self.min_relevance = min_relevance
        self.relevance_margin = relevance_margin
        self.max_passages = max_passages
        self.max_sentences = max_sentences  # 0: no sentence budget
        # Quote the passage sentence that best answers under the model's own (or instead of it,
        # when the model states what the passages do not say): see knowledge/evidence.py.
        self.quote_evidence = quote_evidence
        # What of the chosen adapter (stack) answers a question: see adapters.serving.QuestionRouting.
        # With routing, an adapter it sends a question to was taught on questions like it: its answer
        # is labelled so.
        self.route = route

    # --- steps ------------------------------------------------------------------------------
    def retrieve(self, question: str, *, user_id: str | None, guild_id: str | None) -> list[Hit]:
        """The passages this asker may see: the guild's posts and their own records only."""
        if self.kb is None or guild_id is None:
            return []  # a DM has no guild, so no community and no scoped records
        return list(self.kb.search(question, guild_id=guild_id, user_id=user_id, k=self.top_k))

    def select(self, hits: Sequence[Hit], question: str | None = None) -> list[Hit]:
        """The passages worth putting in the prompt (and citing): above the relevance floor or
        matched lexically, within ``relevance_margin`` of the best one, at most ``max_passages``.
        Given the ``question``, the ones kept are those whose best sentence answers it best
        (:func:`knowledge.evidence.passage_scores`), not the ones most about its topic: on
        bench/answer_quality.py the expected passage was used for 93 % of English questions instead
        of 87 %. Not for Japanese (the embedder is English-only: 85 % either way, and the quotes
        worse), where the retrieval's order, lexical matches included, stands."""
        kept = [h for h in hits if h.lexical or (h.similarity or 0.0) >= self.min_relevance]
        if kept and self.relevance_margin is not None:
            best = max((h.similarity or 0.0) for h in kept)
            kept = [h for h in kept if h.lexical or (h.similarity or 0.0) >= best - self.relevance_margin]
        similarity = getattr(self.kb, "similarities", None)
        if question and self.max_passages and len(kept) > self.max_passages and not is_japanese(question):
            scores = passage_scores(question, [h.chunk.text for h in kept], similarity)
            kept = [kept[i] for i in sorted(range(len(kept)), key=lambda i: (-scores[i], i))]
        if question:
            # An accepted correction of this very question wins over any older passage.
            # (The first one found: each check embeds the correction's question.)
            corrected = next((h for h in hits if correction_answer(question, h.chunk.text, similarity)), None)
            if corrected is not None:
                kept = [corrected, *(h for h in kept if h.chunk.id != corrected.chunk.id)]
            if missing_names(question, [h.chunk.text for h in kept]):
                return []  # the notes are about someone or something else
        return kept[: self.max_passages] if self.max_passages else kept

    def _tokens(self, text: str) -> int:
        count = getattr(self.runtime, "count_tokens", None)
        return int(count(text)) if callable(count) else len(text) // 4 + 1

    def fit_context(self, hits: Sequence[Hit]) -> list[Hit]:
        """Keep passages in rank order while they fit ``max_context_tokens``; the first always goes in."""
        kept: list[Hit] = []
        used = 0
        for hit in hits:
            cost = self._tokens(passage_block(hit.chunk.text) + "\n\n")
            if kept and used + cost > self.max_context_tokens:
                break
            kept.append(hit)
            used += cost
        return kept

    def build_messages(
        self, question: str, hits: Sequence[Hit], history: Sequence[dict[str, str]] = ()
    ) -> tuple[list[dict[str, str]], str]:
        """Chat messages for the runtime (history, then context + question) and the context block."""
        context = format_context(hit.chunk.text for hit in hits)
        return question_messages(question, context, history), context

    def _render(self, messages: list[dict[str, str]]) -> str:
        render = getattr(self.runtime, "render_prompt", None)
        if callable(render):
            return str(render(messages, self.system_prompt))
        return plain_transcript(with_system(messages, self.system_prompt))

    def _prepare(self, question: str, hits: Sequence[Hit], history: Sequence[dict[str, str]]):
        question = question.strip()
        if not question:
            raise KnowledgeError("ask a question: the text is empty")
        used = self.fit_context(self.select(hits, question))
        quote = None
        if used and self.quote_evidence:
            similarity = getattr(self.kb, "similarities", None)
            quote = choose_quote(question, [h.chunk.text for h in used], similarity)
            if quote is not None and not quote.topical:
                # Not even about what was asked ("the bank account number" → a ride's start point):
                # the notes have nothing on it, and say so rather than quote something unrelated.
                used, quote = [], None
        messages, context = self.build_messages(question, used, history)
        # Ids only: the passages may be someone's personal records and logs are read by operators.
        log.debug("answering with chunks %s", [hit.chunk.id for hit in used])
        return _Prepared(question, used, messages, context, quote)

    def _kind(self, question: str, used: Sequence[Hit], chosen: dict[str, Any], guild_id: str | None) -> str:
        """What the answer rests on (see :func:`adapters.prompt.compose_answer`): the notes; an adapter
        routing sent the question to (what this server taught); general knowledge for a clearly
        general question; else nothing (no generation at all)."""
        if used:
            return "notes"
        if not self._searched(guild_id):
            return "open"
        routed = chosen.get("adapter")
        if self.route is not None and isinstance(routed, AdapterChoice) and routed.names:
            return "taught"
        return "general" if is_general(question) else "nothing"

    def _answer(self, prepared: _Prepared, generation: Any, kind: str) -> Answer:
        question, used, messages, context, quote = prepared
        text = "" if generation is None else str(getattr(generation, "text", generation)).strip()
        adapter = None  # no generation: nothing answered it
        if generation is not None:
            adapter = getattr(generation, "adapter", getattr(self.runtime, "active_adapter", None))
        text = finish_answer(text, max_sentences=self.max_sentences)  # the budget first: judged as shown
        if kind == "general":  # no community facts, and "I'm sorry, I'm not a chatbot" is no answer
            text = "" if is_non_answer(text) else general_only(text, question)
        text = compose_answer(
            text,
            kind=kind,
            quote=quote.text if quote else None,
            quote_answers=bool(quote and quote.answers),
            where=used[quote.passage].chunk.citation() if quote else None,
            # Shown over a quote that answers only when it states nothing its answering sentences do
            # not: "The membership year starts on 22 November." over "…runs from 1 April" misleads, and
            # so does "Ollie Brennan writes the rota." over "Priya Lal … writes the rota. Ollie Brennan …".
            grounded=is_grounded(text, quote.answer if quote and quote.answers else context)
            and not repeats_question(text, question),
        )
        return Answer(
            answer=text,
            sources=[Source.of(h.chunk) for h in used],
            adapter=adapter,
            question=question,
            context=context,
            chunk_ids=[h.chunk.id for h in used],
            prompt=self._render(messages),
            prompt_version=PROMPT_VERSION,
        )

    # --- entry points -----------------------------------------------------------------------
    def answer(
        self,
        question: str,
        *,
        user_id: str | None,
        guild_id: str | None,
        history: Sequence[dict[str, str]] = (),
        on_token: Callable[[str], None] | None = None,
        adapter: AdapterChoice = ACTIVE,
    ) -> Answer:
        """Retrieve, prompt and generate (blocking). ``adapter``: the adapters to answer with
        (default: the runtime's active one)."""
        hits = self.retrieve(question, user_id=user_id, guild_id=guild_id)
        prepared = self._prepare(question, hits, history)
        chosen = self._adapter(prepared.question, adapter)
        kind = self._kind(prepared.question, prepared.used, chosen, guild_id)
        generation = None
        if kind != "nothing":
            generation = self.runtime.generate(
                prepared.messages, system_prompt=self.system_prompt, on_token=on_token, **chosen
            )
        return self._answer(prepared, generation, kind)

    async def aanswer(
        self,
        question: str,
        *,
        user_id: str | None,
        guild_id: str | None,
        history: Sequence[dict[str, str]] = (),
        on_token: Callable[[str], None] | None = None,
        adapter: AdapterChoice = ACTIVE,
    ) -> Answer:
        """:meth:`answer` without blocking the event loop: retrieval, choosing the passages (which
        embeds their sentences) and the answer's finishing in a thread, generation queued."""
        hits = await asyncio.to_thread(self.retrieve, question, user_id=user_id, guild_id=guild_id)
        # Choosing the passages and the quote embeds their sentences: off the event loop.
        prepared = await asyncio.to_thread(self._prepare, question, hits, history)
        chosen = await asyncio.to_thread(self._adapter, prepared.question, adapter)  # routing embeds it
        kind = self._kind(prepared.question, prepared.used, chosen, guild_id)
        generation = None
        if kind != "nothing":  # a question about the community with nothing in the notes: no guess
            generation = await self.runtime.agenerate(
                prepared.messages, system_prompt=self.system_prompt, on_token=on_token, **chosen
            )
        return await asyncio.to_thread(self._answer, prepared, generation, kind)

    def _adapter(self, question: str, adapter: AdapterChoice) -> dict[str, Any]:
        """The runtime keyword for the adapters answering ``question``: ``adapter`` (default: the
        runtime's active one) as routing leaves it; no keyword for the active one unrouted."""
        if self.route is None:
            return {} if adapter == ACTIVE else {"adapter": adapter}
        active = getattr(self.runtime, "active_adapter", None)
        return {"adapter": self.route(adapter.resolve(active), question)}

    def _searched(self, guild_id: str | None) -> bool:
        """Whether a knowledge base was consulted (a DM has none: no 'nothing found' note there)."""
        return self.kb is not None and guild_id is not None
