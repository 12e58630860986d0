"""A document's structure: its sections (heading + text), whatever the format it came in.

Markdown headings, HTML headings and the headings of plain text and PDF pages (short Title Case or
upper-case lines, underlined lines) become section boundaries; the section's title goes with each
chunk cut from it and with its citation. Every format is first written as markdown (HTML elements
as headings, paragraphs, list items and table rows; plain-text headings marked with ``##``), then
cut at its headings and unwrapped by :func:`knowledge.text.unwrap`, so a section never runs into
the next one and no sentence is cut at a line break.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from knowledge.text import is_heading, starts_unit, unwrap

_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_UNDERLINE = re.compile(r"^\s*(=+|-+)\s*$")
_END_PUNCT = re.compile(r"[.,;:!?。！？、)\]\"'”’]$")
_LOWER_WORDS = {"a", "an", "and", "as", "at", "by", "for", "in", "of", "on", "or", "the", "to", "with", "&"}


@dataclass(frozen=True)
class Part:
    """One section of a document: its heading (None before the first one) and its unwrapped text."""

    title: str | None
    text: str
    page: int | None = None


def markdown_parts(text: str, *, page: int | None = None, title: str | None = None) -> list[Part]:
    """Cut markdown at its ATX headings (outside fenced code); each part's text unwrapped. ``title``:
    the heading in force before the first one (a PDF section running onto a new page)."""
    parts: list[Part] = []
    lines: list[str] = []
    fenced = False

    def close() -> None:
        body = unwrap("\n".join(lines)).strip()
        if body:
            parts.append(Part(title, body, page))

    for line in text.replace("\r\n", "\n").split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        heading = None if fenced else _ATX.match(line)
        if heading and heading.group(2).strip():
            close()
            lines = []
            title = heading.group(2).strip()
            continue
        lines.append(line)
    close()
    return parts


def _looks_like_heading(line: str) -> bool:
    """A plain-text heading: a short line with no end punctuation, in Title Case or upper case."""
    words = line.split()
    if not 1 <= len(words) <= 8 or len(line) > 60 or _END_PUNCT.search(line) or starts_unit(line):
        return False
    if not (line[0].isupper() or line[0].isdigit()):
        return False
    letters = [c for c in line if c.isalpha()]
    if letters and all(c.isupper() for c in letters) and len(letters) >= 3:
        return True
    significant = [w for w in words if w.lower() not in _LOWER_WORDS and w[0].isalpha()]
    return bool(significant) and all(w[0].isupper() for w in significant) and len(words) >= 2


def mark_plain_headings(text: str, *, paragraph_ends: bool = False) -> str:
    """Plain text as markdown: its heading lines (Title Case or upper case on a line of their own
    after a blank line or a finished sentence, or underlined with === / ---) marked ``##``.

    ``paragraph_ends``: text without blank lines between paragraphs (a PDF page's extracted text)
    gets one after a line that ends a sentence well short of the page's line width."""
    lines = text.replace("\r\n", "\n").split("\n")
    width = max((len(line.rstrip()) for line in lines), default=0)
    # The next line with text after each line (one pass from the end: documents can be long).
    following_text = [""] * len(lines)
    for i in range(len(lines) - 2, -1, -1):
        below = lines[i + 1].strip()
        following_text[i] = below or following_text[i + 1]
    out: list[str] = []
    for i, raw in enumerate(lines):
        line = raw.strip()
        following = following_text[i]
        if _UNDERLINE.match(line) and out and out[-1].strip() and not is_heading(out[-1]):
            out[-1] = f"## {out[-1].strip()}"
            continue
        before = out[-1].strip() if out else ""
        after_break = not before or is_heading(before) or bool(re.search(r"[.!?:。！？]$", before))
        underlined = i + 1 < len(lines) and _UNDERLINE.match(lines[i + 1].strip())
        if line and following and after_break and _looks_like_heading(line) and not underlined:
            out += ["", f"## {line}", ""]
            continue
        out.append(raw)
        if paragraph_ends and re.search(r"[.!?。！？]$", line) and len(line) < 0.7 * width:
            out.append("")
    return "\n".join(out)


def plain_parts(text: str) -> list[Part]:
    """The sections of a plain-text document (headings found by :func:`mark_plain_headings`)."""
    return markdown_parts(mark_plain_headings(text))


def pdf_parts(pages: list[str]) -> list[Part]:
    """The sections of a PDF's pages (each page's extracted text): headings found as in plain text,
    paragraphs rejoined; a section running over a page break keeps its title on the next page."""
    parts: list[Part] = []
    title: str | None = None
    for number, page in enumerate(pages, start=1):
        found = markdown_parts(mark_plain_headings(page, paragraph_ends=True), page=number, title=title)
        parts += found
        if found:
            title = found[-1].title
    return parts


_BLOCKS = ("h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "dt", "dd", "blockquote", "caption")
# Page furniture: navigation, scripts, a footer's copyright and links are no community knowledge.
_DROPPED = ["script", "style", "noscript", "template", "nav", "svg", "form", "button", "footer"]


def html_markdown(html: str) -> str:
    """An HTML page as markdown: headings as ``#`` lines, paragraphs, list items as ``- `` lines,
    table rows as ``| a | b |`` lines; navigation, footers, scripts and styles left out. Text outside these
    elements (a bare ``<div>``) is kept as a paragraph of its own."""
    from bs4 import BeautifulSoup, NavigableString, Tag
    from bs4.element import PreformattedString

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(_DROPPED):
        tag.decompose()
    root = soup.body or soup
    out: list[str] = []

    def text_of(tag: Tag) -> str:
        return re.sub(r"\s+", " ", tag.get_text(" ", strip=True)).strip()

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, PreformattedString):
                continue  # a comment, the doctype, a processing instruction: no text of the page
            if isinstance(child, NavigableString):
                loose = re.sub(r"\s+", " ", str(child)).strip()
                if loose and child.parent is not None and child.parent.name not in ("head", "title"):
                    out.append(loose)
                continue
            if not isinstance(child, Tag) or child.name in ("head", "title"):
                continue
            name = child.name or ""
            if name == "tr":
                cells = child.find_all(["th", "td"])
                out.append("| " + " | ".join(text_of(cell) for cell in cells) + " |")
                if cells and all(cell.name == "th" for cell in cells):
                    out.append("|" + "---|" * len(cells))  # a header row, as markdown marks one
            elif name in _BLOCKS:
                content = text_of(child)
                if not content:
                    continue
                if name[0] == "h" and name[1:].isdigit():
                    out.extend(["", "#" * int(name[1]) + " " + content, ""])
                elif name == "li":
                    out.append(f"- {content}")
                else:
                    out.extend(["", content, ""])
            else:
                walk(child)
                if name in ("ul", "ol", "table", "div", "section", "article", "dl", "header"):
                    out.append("")

    walk(root)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def html_parts(html: str) -> list[Part]:
    """The sections of an HTML page (see :func:`html_markdown`)."""
    return markdown_parts(html_markdown(html))
