"""Grounding a small model's answer: the sentence of the passages that answers, and whether the
model's own words stay within what the passages say.

A 135M model answers well from a good passage only part of the time; it also invents numbers and
names. So the chain shows, under the model's sentence, the passage sentence that best matches the
question (a quote, marked as such), and drops the model's sentence when it states a number or a name
the passages do not hold. Both are judged by the answer-quality benchmark (``bench/answer_quality.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from knowledge.text import is_table_row, split_sentences

_CJK = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")  # Japanese kana and kanji
# Words that start sentences or are common enough to never count as an invented name.
_COMMON = {
    "i", "the", "a", "an", "you", "your", "yes", "no", "it", "this", "that", "there", "they", "we", "our",
    "if", "in", "on", "at", "for", "to", "and", "or", "but", "please", "members", "member", "club",
}  # fmt: skip
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-zA-Z'-]+")
# A small model's ways of not answering at all.
_NON_ANSWER = re.compile(
    r"i'?m sorry|as an? (ai|chat ?bot|discord|assistant|bot)|i('?m| am) (not|just)|"
    r"i (don'?t|do not|cannot|can'?t) (know|help|provide)|^the answer (is|to)[^.]*:\s*$",
    re.IGNORECASE,
)


def is_japanese(text: str) -> bool:
    """Whether ``text`` holds kana or kanji."""
    return bool(_CJK.search(text))


def sentences(text: str) -> list[str]:
    """The sentences (list items, table rows) of a passage that can answer something, split by the
    one splitter ingestion uses (:func:`knowledge.text.split_sentences`: a hard-wrapped paragraph is
    one text, a heading never part of a sentence); list bullets and a table row's outer bars
    removed, headings themselves and a correction's question left out."""
    parts = [p for p in _with_table_headers(split_sentences(text)) if not _HEADING_LINE.match(p)]
    parts = [p for p in parts if not _QUESTION_LINE.match(p)]
    parts = [
        re.sub(r"^\s*([-*+•■]|\d+[.)]|answer\s*:)\s*", "", p, flags=re.IGNORECASE).strip() for p in parts
    ]
    return [p for p in parts if _informative(p)]


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _is_separator(cells: list[str]) -> bool:
    """A markdown table's ``|---|:--|`` row."""
    return all(set(cell) <= set("-: ") for cell in cells)


def _with_table_headers(parts: list[str]) -> list[str]:
    """Table rows as sentences a member can read: each body row's cells named by the header row
    ("Grade: B; Average speed: 25 km/h"); the header and separator rows themselves dropped."""
    out: list[str] = []
    header: list[str] | None = None
    for i, part in enumerate(parts):
        if not is_table_row(part):
            header = None
            out.append(part)
            continue
        cells = _cells(part)
        if _is_separator(cells):
            continue
        following = parts[i + 1] if i + 1 < len(parts) else ""
        if header is None and is_table_row(following) and _is_separator(_cells(following)):
            header = cells
            continue
        if header and len(header) == len(cells):
            out.append("; ".join(f"{name}: {cell}" for name, cell in zip(header, cells, strict=True) if cell))
        else:
            out.append(" | ".join(cells))
    return out


# An accepted correction is stored as "Question: …\nAnswer: …": the question is no evidence.
_QUESTION_LINE = re.compile(r"^\s*question\s*:", re.IGNORECASE)


# A markdown heading, or an upper-case heading line of a plain-text document.
_HEADING_LINE = re.compile(r"^\s*#|^\s*[A-Z0-9][A-Z0-9 &/'-]+\s*$")


def _informative(sentence: str) -> bool:
    if len(sentence) < 6:
        return False
    if _CJK.search(sentence):  # Japanese: no spaces between words
        return len(sentence) >= 8
    return len(sentence.split()) >= 4 or bool(re.search(r"\d", sentence))


def _grams(text: str, size: int) -> set[str]:
    squeezed = re.sub(r"\s+", " ", text.casefold())
    return {squeezed[i : i + size] for i in range(max(0, len(squeezed) - size + 1))}


def overlap(question: str, sentence: str) -> float:
    """Share of the question's character n-grams found in the sentence (works for any script:
    bigrams for Japanese, which has no spaces and short words; trigrams otherwise)."""
    size = 2 if _CJK.search(question) else 3
    grams = _grams(question, size)
    return len(grams & _grams(sentence, size)) / len(grams) if grams else 0.0


# What a question asks for, and what a sentence that gives it holds: a bi-encoder ranks a sentence
# *about* the question's topic as high as the one that *answers* it ("How many fit in the room?" →
# the room's address, not "The room holds 44 people."). Chosen with bench/answer_quality.py --evidence-only.
_DIGITS = r"\d|[一二三四五六七八九十百千万]"
_NUMBER_WORDS = (
    r"\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|fifty|hundred)\b"
)


def _ask(question: str, looks: str, flags: int = re.IGNORECASE) -> tuple[re.Pattern[str], re.Pattern[str]]:
    return re.compile(question, re.IGNORECASE), re.compile(looks, flags)


_ASKS: tuple[tuple[re.Pattern[str], re.Pattern[str]], ...] = (
    _ask(r"phone|\bcall\b|\bring\b|電話", r"\d{3}[-\s.]?\d{4}\b|\d+-\d+-\d+"),
    _ask(r"how many (people|members|persons)|何人|何名", r"\d[\d,]*\s*(人|名|people|members|persons)"),
    _ask(r"how many grams|何グラム|何g", r"\d+\s*(g|グラム|ｇ)(?![a-z])"),
    _ask(
        r"\bhow (many|much|long|old|often|far|big|heavy|large)\b|いくら|\bwhat (time|year|date)\b|\bnumber\b|percent|"
        r"\bshare\b|\bage\b|何[人名グキ歳時日回円分本匹％%枚]",
        _DIGITS + "|" + _NUMBER_WORDS + r"|\bhalf\b",
    ),
    # A length of time, a price, a frequency, a share: the kind of number, not only a number.
    _ask(
        r"\bhow long\b|how many (days|weeks|months|hours|minutes|years)\b|何日|何週|何か月|何ヶ月|何時間|期間",
        r"\b(minute|hour|day|week|fortnight|month|year)s?\b|分間|時間|日間|週間|か月|ヶ月|年間",
    ),
    _ask(
        r"\bhow much\b|\bcosts?\b|\bprice|\bfees?\b|\bdeposit|いくら|料金|値段|費用",
        r"[$£€¥]\s?\d|\d\s*(円|dollars?|cents?|pounds?|euros?)\b|\bfree\b|無料",
    ),
    _ask(
        r"\bhow often\b|何回|頻度",
        r"\bevery\b|\b(daily|weekly|monthly|yearly|once|twice)\b|\btimes an?\b|毎|回",
    ),
    _ask(r"\bpercent|\bshare of\b|\bproportion|\bdiscount|\bhow much off\b|割引|何割", r"\d\s*%|percent|割"),
    _ask(
        r"\bwhen\b|what day|\bdeadline|\bby when\b|いつ|何曜|締め切り|までに",
        (
            _DIGITS + r"|\b(mon|tues|wednes|thurs|fri|satur|sun)days?\b|\b(weekend|daily|weekly|monthly|"
            r"morning|afternoon|evening|night|noon|midnight|january|february|march|april|may|june|july|"
            r"august|september|october|november|december)\b|曜|毎月|毎週|午前|午後|前日|日前"
        ),
    ),
    _ask(
        r"\bwho\b|\bwhose\b|誰|だれ|どなた",
        # A title, or two capitalised words (at a sentence start too: "Gwen Adeyemi looks after the
        # money."), but not "The Drover's" or "On Sunday".
        r"\b(Dr|Mr|Mrs|Ms)\b\.?|\b(?!(The|A|An|Our|Your|This|That|Every|Each|On|In|At|If|For|From|Club|"
        r"Ride|Bring|Let|Call|Pay|Any|All|Most|Some|Then|When|Where)\b)"
        # ... and a place or an organisation is no person ("Whisker Club", "Fellside Hall").
        r"[A-Z][a-z]+ (?!(Club|Society|Hall|Road|Street|Lane|Fund|Centre|Center|Clinic|Cafe|Café|Hospital)\b)"
        r"[A-Z][a-z]+|さん|先生|獣医師|代表",
        0,
    ),
    _ask(
        r"\bwhere\b|which (room|place|café|cafe|shop|clinic)|どこ|場所|会場",
        (
            r"\d+ [A-Z][a-z]+ (Road|Street|Row|Lane|Avenue|Way)|\b(room|café|cafe|hall|clinic|library|"
            r"channel|cupboard|shelf|online|upstairs|downstairs|centre|center|pub|station|church|school|"
            r"square|cross|yard|park|village|inn|arms|bar|tearoom|crate)\b|#[a-z-]+|区|駅|店|会場|階|カフェ"
        ),
    ),
)
ANSWER_TYPE_WEIGHT = 0.5  # 0.4-0.7 held the key equally often (0: 0.63, 0.5: 0.74 of answerable)


def answer_type_match(question: str, sentence: str) -> float:
    """The share of what ``question`` asks for (a phone number, a number, a day, a name, a place) that
    ``sentence`` holds; 0.5 when the question asks for none of these."""
    wanted = [looks for asks, looks in _ASKS if asks.search(question)]
    if not wanted:
        return 0.5
    return sum(1 for looks in wanted if looks.search(sentence)) / len(wanted)


def _sentence_scores(
    question: str, candidates: list[str], similarity: Callable[[str, list[str]], list[float]] | None
) -> list[float]:
    dense = similarity(question, candidates) if similarity is not None else [0.0] * len(candidates)
    weight = 1.0 if _CJK.search(question) else 0.5
    return [
        dense[i] + weight * overlap(question, c) + ANSWER_TYPE_WEIGHT * answer_type_match(question, c)
        for i, c in enumerate(candidates)
    ]


def passage_scores(
    question: str,
    passages: Sequence[str],
    similarity: Callable[[str, list[str]], list[float]] | None = None,
) -> list[float]:
    """Each passage's best sentence score (as :mod:`knowledge.quoting` ranks them; 0 without one): a
    passage is as good as the sentence in it that answers, not as its average topic."""
    # Each sentence is read under its passage's heading ("## Mascot" over "Our club's heron is Percy").
    split = [[f"{heading_of(p)} {s}".strip() for s in sentences(p)] for p in passages]
    flat = [s for group in split for s in group]
    scores = _sentence_scores(question, flat, similarity) if flat else []
    best, start = [], 0
    for group in split:
        best.append(max(scores[start : start + len(group)], default=0.0))
        start += len(group)
    return best


_HEADINGS = re.compile(r"^\s*#{1,6}\s+(.*)$", re.MULTILINE)


def heading_of(passage: str) -> str:
    """The heading(s) a passage carries (``## Membership`` → ``Membership``), "" without one."""
    return " ".join(_HEADINGS.findall(passage))


def ungrounded(answer: str, context: str) -> list[str]:
    """Numbers and names in ``answer`` that the passages do not hold (an invented fact)."""
    folded = context.casefold()
    facts = [m.group(0) for m in _NUMBER.finditer(answer)]
    facts += [m.group(0) for m in _NAME.finditer(answer) if m.group(0).casefold() not in _COMMON]
    return [fact for fact in facts if fact.casefold() not in folded]


_WORD = re.compile(r"[a-z][a-z'-]{3,}")
_FILLER = {"answer", "question", "notes", "note", "there", "their", "which", "would", "could", "should",
           "about", "every", "with", "from", "have", "that", "this", "they", "will", "your", "what", "when",
           "where", "were", "been", "also", "only", "just", "some", "into", "than", "then"}  # fmt: skip


def word_support(answer: str, context: str) -> float:
    """Share of the answer's content words that the passages use (1.0 when it has none): Latin words,
    and for Japanese, which has no spaces, the character bigrams of its runs of Japanese text (a
    looping "バジューバルのバジューバル…" has almost none in the passages)."""
    folded = context.casefold()
    units = [w for w in _WORD.findall(answer.casefold()) if w not in _FILLER]
    for run in _CJK_RUN.findall(answer):
        units += [run[i : i + 2] for i in range(len(run) - 1)]
    if not units:
        return 1.0
    return sum(1 for unit in units if unit in folded) / len(units)


_CJK_RUN = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]{2,}")


def is_grounded(answer: str, context: str, min_support: float = 0.7) -> bool:
    """The model's answer says something, invents no number or name, and mostly uses the passages' words."""
    return (
        not is_non_answer(answer)
        and not ungrounded(answer, context)
        and word_support(answer, context) >= min_support
    )


def repeats_question(answer: str, question: str, threshold: float = 0.75) -> bool:
    """The answer mostly restates the question ("The answer is: "When can I pick it up?"",
    "これは、東京だと、どこで？"): the share of its character n-grams found in the question."""
    japanese = bool(_CJK.search(answer))

    def bare(text: str) -> str:  # punctuation out; for Japanese, which has no spaces, spaces too
        text = re.sub(r"[^\w\s]", "", text)
        return re.sub(r"\s+", "", text) if japanese else text

    stripped = bare(_PREAMBLE.sub("", answer)).strip()
    size = 2 if japanese else 3
    grams = _grams(stripped, size)
    return bool(grams) and len(grams & _grams(bare(question), size)) / len(grams) >= threshold


# "The answer is:", "The answer to this question is" before what the model means to say.
_PREAMBLE = re.compile(r"the answer( to (this|the|your) question)? is\s*:?|これは、?", re.IGNORECASE)


def is_non_answer(answer: str) -> bool:
    """The model apologised, described itself or announced an answer it never gave."""
    return not answer.strip() or bool(_NON_ANSWER.search(answer.strip()))
