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
    from adapters.prompt import CLOSEST_NOTE, NOTES_SAY

    if answer.startswith(CLOSEST_NOTE) or answer.startswith(NOTES_SAY.split("(")[0]):
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


def is_hedged(answer: str) -> bool:
    """The answer hedges: the notes "don't say that exactly", only the closest sentence is shown."""
    from adapters.prompt import CLOSEST_NOTE

    return CLOSEST_NOTE in answer


def _judged_text(answer: str) -> str:
    """The answer without loopbot's own fixed wording (notes, labels, citations in parentheses)."""
    from adapters.prompt import CLOSEST_NOTE, GENERAL_KNOWLEDGE, NO_GUESS, NOTHING_FOUND, TAUGHT

    for fixed in (CLOSEST_NOTE, GENERAL_KNOWLEDGE, NO_GUESS, NOTHING_FOUND, TAUGHT):
        answer = answer.replace(fixed, " ")
    answer = re.sub(r"The notes \([^)]*\) say:", " ", answer)
    return re.sub(r"”\s*\([^)]*\)", "”", answer)  # a quote's "(source › section)"


_SPECIFIC_NUMBER = re.compile(r"[£$€]?\d+(?:[.,:]\d+)*")
_SPECIFIC_NAME = re.compile(r"(?<![.!?“]\s)(?<![.!?]”\s)(?<!^)(?<!“)\b[A-Z][^\W\d_][\w'-]*")
_NOT_SPECIFIC = {"I", "The", "This", "That", "These", "It", "You", "Your", "We", "Our", "If", "In", "On", "At",
                 "For", "To", "And", "Or", "But", "Please", "Yes", "No", "A", "An"}  # fmt: skip


def invented_specifics(answer: str, corpus: str, question: str = "") -> list[str]:
    """Numbers and names the answer states that neither the documents (``corpus``) nor the question
    hold: a specific the model made up."""
    text = _judged_text(answer)
    known = (corpus + " " + question).casefold()
    found = [m.group(0).lstrip("£$€") for m in _SPECIFIC_NUMBER.finditer(text)]
    found += [m.group(0) for m in _SPECIFIC_NAME.finditer(text) if m.group(0) not in _NOT_SPECIFIC]
    # A fact is known when the documents hold it as a whole number ("7:30" in "7:30pm", "25" in
    # "700x25c"; not "10" in "110" or "1.10") or a word start ("Caf" of "Café" is never split off).
    return [
        fact for fact in found if not re.search(rf"(?<![\d.]){re.escape(fact.casefold())}(?![\d])", known)
    ]


_QUOTE = re.compile(r"“([^”]+)”|^> (.+)$", re.MULTILINE)
_PIECE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9£$“(#])|\s+…\s+")


def quoted_pieces(answer: str) -> list[str]:
    """The sentences the answer quotes from the notes (between “ ” or on a ``> `` line)."""
    pieces: list[str] = []
    for match in _QUOTE.finditer(answer):
        quote = re.sub(r"”?\s*\([^)]*\)\s*$", "", match.group(1) or match.group(2)).strip("“” ")
        pieces += [p.strip() for p in _PIECE_END.split(quote) if p.strip()]
    return pieces


def garbled_quote(piece: str, documents: Sequence[str], headings: Sequence[str] = ()) -> bool:
    """A quoted sentence that is not a sentence of the documents: not found in any of them as it is
    (whitespace aside), running over a heading into the next section, or stopping mid-sentence."""
    if "; " in piece and ": " in piece:  # a table row, its cells named by the header row
        values = [cell.split(": ", 1)[-1].rstrip(".") for cell in piece.split("; ")]
        if any(all(v in line for v in values) for doc in documents for line in doc.split("\n")):
            return False
    pattern = r"[\s#*>-]*".join(re.escape(word) for word in piece.split())
    for doc in documents:
        match = re.search(pattern, doc)
        if match is None:
            continue
        inside = doc[match.start() : match.end()]
        spans_heading = any(
            re.search(rf"(^|\n)\s*#*\s*{re.escape(h)}\s*\n", inside) and not piece.startswith(h)
            for h in headings
        )
        if spans_heading or re.search(r"\n\s*#{1,6}\s", inside):
            return True
        if re.search(r"[.!?)”\"':;]$", piece):
            return False
        # No end mark: only a whole line may end so (a list item, a table cell, a heading's text).
        rest = doc[match.end() :]
        return bool(rest.strip()) and not re.match(r"[ \t]*(\n[ \t]*\n|\n[ \t]*([-*+#|]|\d+[.)])|$)", rest)
    return True
