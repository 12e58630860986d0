"""How an answer is judged: does it hold the expected key, admit having nothing, or echo markup?

Shared by the answer-quality benchmark (``bench/answer_quality.py``) and its test, so both judge
alike. Keys are matched case-insensitively on the answer as members read it (a quoted passage
sentence included; `own_words` strips it), never on the source list.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# The context block's own markup, repeated by a small model instead of answering: "[1] (faq.md) ...",
# "1. [2] ...", "Context:", "Question:".
_MARKUP = re.compile(
    r"\[\d+\]\s*\(|^\s*\d+\.\s*\[\d+\]|^\s*(context|question)\s*:", re.IGNORECASE | re.MULTILINE
)

# Ways an answer admits the knowledge base has nothing on the question.
_NOTHING = re.compile(
    r"nothing (on|about)|no (information|info|details|record|mention)|(don't|do not|doesn't|does not) "
    r"(know|say|mention|have|contain)|not (in|mentioned|stated|specified|available)|"
    r"(can't|cannot|couldn't|could not) find|no answer|unknown|"
    r"情報がありません|見つかりません|わかりません|分かりません|記載がありません|ありません",
    re.IGNORECASE,
)


def own_words(answer: str) -> str:
    """The model's own sentence of an answer: without the quoted passage sentence (``> …`` under it,
    or the closest-note quote that replaced it)."""
    from adapters.prompt import CLOSEST_NOTE

    if answer.startswith(CLOSEST_NOTE):
        return ""
    return answer.split("\n> ", 1)[0]


def has_key(answer: str, keys: Sequence[str]) -> bool:
    """The answer holds one of the expected keys (case-insensitive)."""
    folded = answer.casefold()
    return any(key.casefold() in folded for key in keys)


def says_nothing_found(answer: str) -> bool:
    """The answer admits having nothing on the question instead of inventing an answer."""
    return bool(_NOTHING.search(answer))


def echoes_markup(answer: str) -> bool:
    """The answer repeats the prompt's context markup (a small model's way of not answering)."""
    return bool(_MARKUP.search(answer))
