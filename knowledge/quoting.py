"""What a member reads under (or instead of) the model's sentence: the notes' own words, cited.

:func:`choose_quote` picks the passage sentences that best answer (each read under its heading, scored
as :mod:`knowledge.evidence` scores sentences) and says whether they *answer* the question, or are only the closest thing the notes hold. An
answering quote is stated plainly with its section and source; a close one keeps the "the notes don't
say that exactly" hedge. An accepted correction whose question is the member's question answers
with its answer, over any older passage.

The rule, chosen with ``bench/answer_quality.py --evidence-only`` on both benchmarks (see
:func:`answers`): dense similarity could not tell "the course record" from "the women's course
record" (0.55 for an unanswerable question, 0.38-0.86 for answerable ones), so the test is lexical:
every kind of thing asked for, and every content word, present.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from knowledge.evidence import _ASKS, _CJK, _sentence_scores, heading_of, overlap, sentences
from knowledge.lexical import _STOPWORDS

Similarity = Callable[[str, list[str]], list[float]]

# Words of a question that say how it asks, not what it asks about: left out of its content words.
_QUESTION_WORDS = {
    "what", "whats", "what's", "who", "whos", "who's", "where", "wheres", "where's", "when", "how", "hows",
    "which", "does", "do", "is", "are", "can", "could", "should", "would", "will", "much", "many", "long",
    "often", "hey", "pls", "please", "anyone", "someone", "need", "want", "get", "got", "lol", "thanks",
    "there", "here", "know", "tell", "say", "said", "the", "our", "club", "society", "group", "server",
    "thinking", "doing", "wondering", "going", "ugh", "still", "really", "actually", "just", "guys", "folks",
    "hi", "hello", "quick", "question", "mean", "like", "think", "sure", "anybody", "somebody",
    # What kind of answer is wanted, which the answer-type check already requires ("what time" → 7:30pm).
    "time", "times", "day", "days", "date", "place", "held", "hold", "happen", "happens", "located",
    "location", "find", "start", "starts", "begin", "usually", "normally", "typically", "use", "used",
    "take", "takes", "come", "make", "kind", "sort", "type", "number", "cost", "costs", "price", "fee",
    "fees", "amount", "happening", "on", "gets", "go", "goes", "next", "this", "year",
}  # fmt: skip
_CONTENT = re.compile(r"[a-z][a-z'-]{2,}|\d+")
# Capitalised words past a question's first: names, which carry no meaning to match on as words.
_NAMES = re.compile(r"(?<!^)(?<![.!?]\s)\b[A-Z][a-zA-Z'-]*")
CORRECTION_MATCH = 0.8  # cosine of the member's question with a correction's question (MiniLM)
# A sentence this close is about the question even in other words ("the name of the club mascot cat"
# → "Captain Biscuit is the club's cat"): on the classic set every answerable question whose quote held
# the key scored 0.48 or more; the real set's bank account and general questions 0.24-0.43.
TOPICAL_DENSE = 0.45


def content_stems(text: str) -> list[str]:
    """The words of ``text`` that carry meaning, as 5-letter stems ("meetings" and "meeting" agree)."""
    words = [re.sub(r"'s$", "", w).strip("'-") for w in _CONTENT.findall(text.casefold().replace("’", "'"))]
    kept = [w for w in words if w and w not in _STOPWORDS and w not in _QUESTION_WORDS]
    return list(dict.fromkeys(w[:5] for w in kept))


def _covered(stems: Sequence[str], text: str) -> float:
    """The share of ``stems`` found in ``text``'s own stems."""
    if not stems:
        return 1.0
    have = content_stems(text)
    # One word's forms agree by a shared start of 4+ letters ("meet" / "meets", "wear" / "wears").
    found = [
        s for s in stems if any(t.startswith(s) or s.startswith(t) for t in have if min(len(s), len(t)) >= 4)
    ]
    found += [s for s in stems if s in have and len(s) < 4 and s not in found]
    return len(found) / len(stems)


def answers(question: str, sentence: str, heading: str = "") -> bool:
    """Whether ``sentence`` (under ``heading``) answers ``question`` rather than being merely close:
    it holds every kind of thing the question asks for, and every name and every other word that says
    what the question is about is in the sentence or its heading. "What is the women's course record?" is not answered by "The course record is 3
    minutes 41", nor "How many members does the club have?" by "any member can sit in at 7:30pm"."""
    wanted = [looks for asks, looks in _ASKS if asks.search(question)]
    if not all(looks.search(sentence) for looks in wanted):
        return False
    if _CJK.search(question):
        # No words to match, and a character overlap cannot tell 代表 from 副代表 (the leader from the
        # deputy): a Japanese quote is always shown as the closest, never as the answer.
        return False
    where = f"{heading} {sentence}"
    # The names it asks about, in the sentence or its heading: "Who hosts Purr Hour?" is not answered
    # by "Dr. Raj Menon hosts Ask a Vet", a sentence of the same section.
    names = [n for n in _NAMES.findall(question) if len(n) > 1 and not n.startswith("I'")]
    if names and _covered(content_stems(" ".join(names)), where) < 1.0:
        return False
    return _covered(content_stems(_NAMES.sub(" ", question)), where) == 1.0


def fact_answers(question: str, answer: str, taught: str, reworded: bool = False) -> bool:
    """Whether a fact the server taught (``answer``, taught for the questions ``taught``) answers
    ``question``: by the rule for a note's quote (:func:`answers`, the questions as its heading), or,
    for a question that is a re-wording of a taught one (``reworded``), when it names no name or
    number the fact does not ("the 2024 contest" is not "the 2023 contest"): routing asks this before
    a taught adapter answers (adapters/serving/_routing.py). Without an answer (a scope written before answers
    were kept) the questions must hold every word asked about."""
    if not reworded and not answer:
        return _covered(content_stems(question), taught) == 1.0
    if not reworded:
        return answers(question, answer, taught)
    specifics = [n for n in _NAMES.findall(question) if len(n) > 1 and not n.startswith("I'")]
    specifics += re.findall(r"\d+", question)
    return _covered(content_stems(" ".join(specifics)), f"{taught} {answer}") == 1.0


@dataclass(frozen=True)
class Quote:
    """The notes' sentences shown to a member: their text, whether they answer the question (else
    they are only the closest the notes hold), and which passage the best one is from."""

    text: str
    answers: bool
    passage: int
    topical: bool = True  # about what was asked at all (else the notes have nothing on it)
    answer: str = ""  # of an answering quote, the sentences that answer (the text may hold more)


def correction_answer(question: str, passage: str, similarity: Similarity | None) -> str | None:
    """An accepted correction's answer when its question is the member's question (stored as
    ``Question: …`` / ``Answer: …``), else None."""
    match = re.match(r"\s*question\s*:\s*(.+?)\n\s*answer\s*:\s*(.+)", passage, re.IGNORECASE | re.DOTALL)
    if not match:
        return None
    asked, answer = match.group(1).strip(), match.group(2).strip()
    close = similarity(question, [asked])[0] if similarity is not None else 0.0
    if close >= CORRECTION_MATCH or overlap(question, asked) >= 0.8:
        return answer
    return None


def _ranked(
    question: str, passages: Sequence[str], similarity: Similarity | None
) -> tuple[list[tuple[int, str]], list[float], list[int]]:
    """Every sentence of ``passages`` as ``(passage index, sentence)``, its dense similarity to the
    question, and the sentences' order, best first: dense similarity plus character n-gram overlap
    (fully for Japanese, half otherwise) plus whether it holds what the question asks for, each read
    under its heading ("Gwen Adeyemi looks after the money." answers "Who is the treasurer?" under
    "## Treasurer")."""
    candidates = [(i, s) for i, p in enumerate(passages) for s in sentences(p)]
    texts = [s for _, s in candidates]
    if not texts:
        return [], [], []
    dense = similarity(question, texts) if similarity is not None else [0.0] * len(texts)
    headings = [heading_of(p) for p in passages]
    scores = _sentence_scores(question, [f"{headings[p]} {s}" for p, s in candidates], None)
    scores = [score + dense[i] for i, score in enumerate(scores)]
    return candidates, dense, sorted(range(len(texts)), key=lambda i: (-scores[i], i))


def best_sentences(
    question: str, passages: Sequence[str], similarity: Similarity | None = None, count: int = 2
) -> str | None:
    """The ``count`` passage sentences that best answer ``question``, in passage order (None: the
    passages have none). On bench/answer_quality.py's classic set the best two held the expected
    answer for 74 % of answerable questions (63 % without the question-type hint)."""
    candidates, _, ranked = _ranked(question, passages, similarity)
    return " ".join(candidates[i][1] for i in sorted(ranked[:count])) if candidates else None


def choose_quote(
    question: str, passages: Sequence[str], similarity: Similarity | None = None, count: int = 2
) -> Quote | None:
    """The sentences to show for ``question`` from ``passages`` (see the module docstring): the
    answering ones of the best passage, else the closest two (``topical`` when they are about the
    question at all)."""
    for index, passage in enumerate(passages):
        corrected = correction_answer(question, passage, similarity)
        if corrected:
            return Quote(corrected, True, index, answer=corrected)
    candidates, dense, ranked = _ranked(question, passages, similarity)
    if not candidates:
        return None
    texts = [s for _, s in candidates]
    headings = [heading_of(p) for p in passages]
    ranked = ranked[:count]
    answering = [i for i in ranked if answers(question, texts[i], headings[candidates[i][0]])]
    if answering:
        # The answering sentence with the other best ones of its passage (a fee and its exception).
        best = answering[0]
        shown = sorted(i for i in ranked if candidates[i][0] == candidates[best][0])
        answer = _joined(texts[i] for i in sorted(answering) if candidates[i][0] == candidates[best][0])
        return Quote(_joined(texts[i] for i in shown), True, candidates[best][0], answer=answer)
    closest = sorted(ranked)
    topical = any(_about(question, texts[i], headings[candidates[i][0]], dense[i]) for i in closest)
    groups = [
        [texts[i] for i in closest if candidates[i][0] == p]
        for p in dict.fromkeys(candidates[i][0] for i in closest)
    ]
    return Quote(" … ".join(_joined(group) for group in groups), False, candidates[ranked[0]][0], topical)


def _about(question: str, sentence: str, heading: str, dense: float) -> bool:
    """Whether ``sentence`` is at least about what ``question`` asks: half its content words there
    (names aside), or close in meaning. Japanese questions always count (the word test needs spaces)."""
    if _CJK.search(question):
        return True
    return (
        _covered(content_stems(_NAMES.sub(" ", question)), f"{heading} {sentence}") >= 0.5
        or dense >= TOPICAL_DENSE
    )


def _joined(parts: Iterable[str]) -> str:
    """Sentences of one passage one after another; a list item or table row, which has no end mark,
    gets a full stop so it does not run into the next ("Café stop: No. Grade: B; …"). Sentences of
    two passages (two sections) are kept apart with " … " by the caller."""
    return " ".join(p if re.search(r"[.!?。！？:;)”\"']$", p) else f"{p}." for p in parts)
