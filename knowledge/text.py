"""The one sentence splitter: documents as people write them, turned into paragraphs and sentences.

Most markdown, plain text and every PDF's extracted text is *hard-wrapped*: a paragraph is several
lines, and a line break often falls mid-sentence. Splitting sentences at line breaks quoted half a
sentence glued to the next section's line ("…in the back room of the Northbrook Membership costs 18
pounds a year…"). So a line break is not a sentence end here: :func:`unwrap` joins a paragraph's lines
first, and keeps apart only what a writer keeps apart (a blank line, a heading, a list item, a table
row, a fenced code block). Ingestion (:mod:`ingest.structure`, :mod:`ingest.chunking`) and quoting
(:mod:`knowledge.evidence`) both split with :func:`split_sentences`, so a quoted sentence is always a
sentence of one paragraph of one section.
"""

from __future__ import annotations

import re

# A line that starts a unit of its own: a markdown heading, a list item, a table row, a fence.
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")
_ITEM = re.compile(r"^\s*([-*+•■▪◦]|\d{1,3}[.)])\s+\S")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
# A labelled line of a record ("Question: …", "Answer: …", a CSV row's "role: treasurer").
_LABEL = re.compile(r"^\s*[A-Za-z][A-Za-z0-9 _/-]{0,24}:\s")
# Sentence ends, but not after a title or a common abbreviation ("Dr. Raj Menon", "e.g. a carrier").
_SENTENCE_END = re.compile(
    r"(?<=[.!?。！？])(?<!\bDr\.)(?<!\bMr\.)(?<!\bMs\.)(?<!\bMrs\.)(?<!\bSt\.)(?<!\bNo\.)(?<!\bapprox\.)"
    r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\betc\.)(?<!\bvs\.)[\"'”’)]?\s+(?=[\"'“‘(]?[A-Z0-9£$€¥#@*_\u3040-\u9fff])"
    r"|(?<=[。！？])"
)
_SPACES = re.compile(r"[ \t\u00a0]+")
_CJK_END = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]$")
_CJK_START = re.compile(r"^[\u3040-\u30ff\u4e00-\u9fff]")


def starts_unit(line: str) -> bool:
    """Whether ``line`` begins a unit of its own (a heading, a list item, a table row, a fence, a
    labelled line of a record such as ``Answer: …``)."""
    return bool(
        _HEADING.match(line)
        or _ITEM.match(line)
        or _TABLE_ROW.match(line)
        or _FENCE.match(line)
        or _LABEL.match(line)
    )


def _join(previous: str, line: str) -> str:
    """Two lines of one paragraph as one: a space between, none inside Japanese text, a word broken
    with a hyphen at the line end ("mem-\\nbership") put back together."""
    line = line.strip()
    if re.search(r"[a-z]-$", previous) and re.match(r"[a-z]", line):
        return previous[:-1] + line
    if _CJK_END.search(previous) and _CJK_START.match(line):
        return previous + line
    return f"{previous} {line}"


def unwrap(text: str) -> str:
    """``text`` with each paragraph (and each list item, with its indented continuation lines) on
    one line; paragraphs one blank line apart; headings, table rows and fenced code kept line by
    line. A line break inside a paragraph becomes a space."""
    blocks: list[list[str]] = []
    current: list[str] = []  # the lines (units) of the block being read
    fenced = False
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = _SPACES.sub(" ", raw.rstrip())
        if _FENCE.match(line):
            fenced = not fenced
            current.append(line)
            continue
        if fenced:
            current.append(raw.rstrip())
            continue
        if not line.strip():
            if current:
                blocks.append(current)
                current = []
            continue
        previous = current[-1] if current else ""
        continues = (
            current
            and not starts_unit(line)
            and not _HEADING.match(previous)
            and not _TABLE_ROW.match(previous)
            and not _FENCE.match(previous)
            # A list item goes on only on an indented line ("- Juniors pay\n  half."); an unindented
            # one after it is a paragraph of its own ("■ 食事\n子猫の食事は…").
            and (not _ITEM.match(previous) or raw[:1] in (" ", "\t"))
        )
        if continues:
            current[-1] = _join(current[-1], line)
        else:
            current.append(line.strip() if not _ITEM.match(line) else line.rstrip())
    if current:
        blocks.append(current)
    return "\n\n".join("\n".join(block) for block in blocks)


def units(text: str) -> list[str]:
    """The lines of :func:`unwrap`'s result that hold text: paragraphs, list items, table rows,
    headings (each a whole unit, never part of another)."""
    return [line for line in unwrap(text).split("\n") if line.strip()]


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``: each unit of :func:`units` split at sentence ends. No sentence
    spans two units (two paragraphs, two list items, a heading and its text), and none is cut at a
    line break inside a paragraph."""
    found: list[str] = []
    for unit in units(text):
        found.extend(part.strip() for part in _SENTENCE_END.split(unit) if part.strip())
    return found


def is_heading(line: str) -> bool:
    """A markdown heading line (``## Membership``)."""
    return bool(_HEADING.match(line))


def is_table_row(line: str) -> bool:
    """A markdown table row (``| Grade | Speed |``)."""
    return bool(_TABLE_ROW.match(line))
