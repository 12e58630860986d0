"""The one owner of the prompt layout: system prompt, context block and chat turns.

Serving (``knowledge.chain``), training (``adapters.training``), calibration
(``adapters._calibration``), the gate and the regression evaluation all build their messages here,
and both runtimes put the system prompt in front with :func:`with_system`. A prompt that drifts
between training and serving silently undoes what training taught, so nothing else may spell out
"Context:" or where the system prompt goes. Bump :data:`PROMPT_VERSION` whenever the layout
changes: it is logged with every answer, so pairs made under an older layout can be told apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

PROMPT_VERSION = "rag-v1"

DEFAULT_SYSTEM_PROMPT = (
    "You are loopbot, a helpful assistant for this community. Answer briefly and truthfully. "
    "When context passages are given, answer from them and cite them as [1], [2], ... "
    "If the context does not contain the answer, say you don't know."
)

# The last turns of a reply chain kept as history; older ones rarely help a small model.
MAX_HISTORY_MESSAGES = 6

Message = dict[str, str]


class Passage(Protocol):
    """A retrieved passage as the prompt shows it: where it comes from and its text."""

    @property
    def source(self) -> str: ...

    @property
    def text(self) -> str: ...


def passage_block(number: int, source: str, text: str) -> str:
    """One numbered passage as it appears in the context block: ``[n] (source) text``."""
    return f"[{number}] ({source}) {text}"


def format_context(passages: Iterable[Passage]) -> str:
    """Number the passages in the given order, one blank line apart (the Alpaca ``input``)."""
    return "\n\n".join(passage_block(n, p.source, p.text) for n, p in enumerate(passages, start=1))


def user_message(question: str, context: str) -> str:
    """The final user turn: the context block (if any) then the question."""
    if not context:
        return question
    return f"Context:\n{context}\n\nQuestion: {question}"


def history_turns(history: Sequence[Message]) -> list[Message]:
    """The usable turns of a conversation: user/assistant roles with text, the last few only."""
    turns = [
        {"role": m["role"], "content": str(m["content"])}
        for m in history
        if m.get("role") in ("user", "assistant") and str(m.get("content", "")).strip()
    ]
    return turns[-MAX_HISTORY_MESSAGES:]


def question_messages(question: str, context: str, history: Sequence[Message] = ()) -> list[Message]:
    """The turns a runtime receives for a question (no system turn: the runtime adds it)."""
    return [*history_turns(history), {"role": "user", "content": user_message(question, context)}]


def training_messages(question: str, context: str, system_prompt: str) -> list[Message]:
    """The full chat for a training row, gate item or calibration text: system turn first, then the
    question exactly as :func:`question_messages` puts it, so training sees what serving renders."""
    return with_system(question_messages(question.strip(), (context or "").strip()), system_prompt)


def with_system(messages: Sequence[Message], system_prompt: str | None) -> list[Message]:
    """``messages`` with ``system_prompt`` as the first turn, replacing any system turn they had.

    An empty or None system prompt keeps the messages' own system turn (if any)."""
    if not system_prompt:
        return [dict(m) for m in messages]
    return [
        {"role": "system", "content": system_prompt},
        *(dict(m) for m in messages if m.get("role") != "system"),
    ]


def split_system(messages: Sequence[Message]) -> tuple[str | None, list[Message]]:
    """The inverse of :func:`with_system`: ``(system prompt or None, the other turns)``."""
    system = next((m["content"] for m in messages if m.get("role") == "system"), None)
    return system, [dict(m) for m in messages if m.get("role") != "system"]


def fold_system(messages: Sequence[Message]) -> list[Message]:
    """For chat templates that reject a system role: the system text joins the first user turn."""
    chat = [dict(m) for m in messages]
    if len(chat) > 1 and chat[0]["role"] == "system":
        merged = {"role": chat[1]["role"], "content": chat[0]["content"] + "\n\n" + chat[1]["content"]}
        return [merged, *chat[2:]]
    return chat


def plain_transcript(messages: Sequence[Message]) -> str:
    """A readable rendering for tokenizers without a chat template (and for logs of fake runtimes)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
