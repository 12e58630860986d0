"""The one owner of the prompt layout: system prompt, context block and chat turns.

Serving (``knowledge.chain``), training (``adapters.training``), calibration
(``adapters.model._calibration``), the gate and the regression evaluation all build their messages here,
and both runtimes put the system prompt in front with :func:`with_system`. A prompt that drifts
between training and serving silently undoes what training taught, so nothing else may spell out
"Context:" or where the system prompt goes. Bump :data:`PROMPT_VERSION` whenever the layout
changes: it is logged with every answer, so pairs made under an older layout can be told apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

PROMPT_VERSION = "rag-v2"

# Chosen with bench/answer_quality.py: a 135M model copies numbered "[1] (source)" markup and lists
# instead of answering, so the passages are plain text and the instruction asks for one sentence.
DEFAULT_SYSTEM_PROMPT = (
    "You are loopbot, the assistant of this community's Discord server. Answer the member's question "
    "in one short sentence, using only the facts in the notes given with it. "
    "If the notes do not say, answer: I don't know."
)

# Asked of the base model (no adapter) for each correction's question before training, the answer
# cleaned by adapters.training.clean_rephrasing. Told to rewrite, the 135M model answers the question
# instead (1 usable of 40 on bench/data/learning_facts.json); shown three rewrites first, 32 of 40.
REPHRASE_SYSTEM_PROMPT = "You rewrite questions in other words, keeping every name."
_REPHRASE_ASK = "Say this question another way: {}"
_REPHRASE_SHOTS = (
    ("Where does the chess group meet?", "Where do the chess players get together?"),
    ("What is the name of Tom's dog?", "What did Tom call his dog?"),
    ("How much does the spring trip cost?", "What is the price of the spring trip?"),
)

# The last turns of a reply chain kept as history; older ones rarely help a small model.
MAX_HISTORY_MESSAGES = 6

Message = dict[str, str]


_HEADING = re.compile(r"^\s*#+\s*", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n\s*\n+")


def passage_block(text: str) -> str:
    """One passage as it appears in the context block: its text, markdown heading marks removed.

    No number and no source name: the small model copied that markup instead of answering (the
    member sees the numbered sources under the answer anyway)."""
    return _BLANK_LINES.sub("\n", _HEADING.sub("", text)).strip()


def format_context(passages: Iterable[str]) -> str:
    """The passages' texts in the given order, one blank line apart (the Alpaca ``input``)."""
    return "\n\n".join(passage_block(text) for text in passages)


def user_message(question: str, context: str) -> str:
    """The final user turn: the notes (if any) then the question."""
    if not context:
        return question
    return f"Notes:\n{context}\n\nQuestion: {question}"


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


def rephrase_messages(question: str) -> list[Message]:
    """The turns asking the base model for ``question`` in other words (system turn added by the runtime)."""
    turns: list[Message] = []
    for asked, rewritten in _REPHRASE_SHOTS:
        turns += [
            {"role": "user", "content": _REPHRASE_ASK.format(asked)},
            {"role": "assistant", "content": rewritten},
        ]
    return [*turns, {"role": "user", "content": _REPHRASE_ASK.format(question.strip())}]


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


# Said when the knowledge base had no passage worth using. For a question about the community that is
# all (a small model's guess about a community must not pass for the community's word); for a clearly
# general one the model's general-knowledge answer follows, marked as such (knowledge/questions.py).
NOTHING_FOUND = "This server's knowledge base has nothing on that."
NO_GUESS = "I won't guess about this community: a curator can add it, or correct me when you know."
GENERAL_KNOWLEDGE = "From general knowledge (not this server's notes):"
# What an adapter answers from what this server taught it (routing sent the question to it).
TAUGHT = "From what this server taught me:"
# The notes' sentences that answer, stated plainly with where they are; or the closest ones, hedged.
NOTES_SAY = "The notes ({where}) say:"
CLOSEST_NOTE = "The notes don't say that exactly; the closest one says:"

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")
# A phrase said three times in a row, whatever stands between ("10 days - 10 days - 10 days",
# "The Purrsuit  The Purrsuit …", "トラブルやトラブルやトラブルや"): the small model's loop.
_LOOP = re.compile(r"(\S.{2,79}?)(?:[\W_]*?\1){2,}", re.DOTALL)
_LOOP_WINDOW = 320  # characters searched at the end of a growing text (a phrase is at most 80)


def loop_start(text: str, *, tail_only: bool = False) -> int | None:
    """Where ``text`` starts looping: the end of the first of three repeats of a phrase with at least
    three letters (so "1000" or "..." never count). None when it does not loop. ``tail_only``: only a
    loop that reaches the end of ``text`` (cheap enough to call after every generated token)."""
    offset = max(0, len(text) - _LOOP_WINDOW) if tail_only else 0
    for match in _LOOP.finditer(text, offset):
        if tail_only and not _reaches_end(text, match):
            continue
        if sum(ch.isalpha() for ch in match.group(1)) >= 3:
            return match.start() + len(match.group(1))
    return None


def _reaches_end(text: str, match: re.Match[str]) -> bool:
    """What follows the repeats, if anything, is the start of one more (the loop is still going)."""
    rest = text[match.end() :]
    return any(match.group(1).startswith(rest.lstrip(chars)) for chars in (" \t\n", " \t\n-–—*,;:."))


def finish_answer(text: str, *, max_sentences: int = 0) -> str:
    """The model's text cut where it starts looping, then to ``max_sentences`` sentences (0: all);
    :func:`compose_answer` then puts it with the notes' words."""
    text = text.strip()
    loop = loop_start(text)
    if loop is not None:
        text = text[:loop].rstrip(" -–—*,;:")
    if max_sentences > 0:
        text = " ".join(_SENTENCE_END.split(text)[:max_sentences]).strip()
    return text


def compose_answer(
    text: str,
    *,
    kind: str,
    quote: str | None = None,
    quote_answers: bool = False,
    where: str | None = None,
    grounded: bool = True,
) -> str:
    """The answer as members read it, by what it rests on (``kind``):

    - ``"notes"``: passages were used. A ``quote`` that answers the question is stated plainly with
      ``where`` it is (source › section), under the model's sentence when that is ``grounded``,
      else alone. A quote that is only close is hedged, and the model's sentence is left out: the
      notes do not answer, so whatever it states is not what the notes say (on the real-documents
      set, grounded-looking sentences stated the club's course record as the women's).
    - ``"nothing"``: nothing in the knowledge base, and the question is about the community: say so
      and stop (``text`` is not shown).
    - ``"general"``: nothing in the knowledge base, a clearly general question: the model's answer,
      marked as general knowledge (none: only the note).
    - ``"taught"``: the adapter taught on questions like this one answered: marked as such.
    - ``"open"``: no knowledge base was searched (a DM): the model's answer as it is.
    """
    text = text.strip()
    if kind == "nothing":
        return f"{NOTHING_FOUND} {NO_GUESS}"
    if kind == "general":
        return f"{NOTHING_FOUND} {GENERAL_KNOWLEDGE} {text}" if text else f"{NOTHING_FOUND} {NO_GUESS}"
    if kind == "taught":
        return f"{TAUGHT} {text}" if text else f"{NOTHING_FOUND} {NO_GUESS}"
    if kind == "open" or quote is None:
        return text
    cited = f"“{quote}” ({where})" if where else f"“{quote}”"
    if quote_answers:
        return (
            f"{text}\n> {cited}"
            if grounded and text
            else f"{NOTES_SAY.format(where=where or 'notes')} “{quote}”"
        )
    return f"{CLOSEST_NOTE} {cited}"


def plain_transcript(messages: Sequence[Message]) -> str:
    """A readable rendering for tokenizers without a chat template (and for logs of fake runtimes)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
