"""Turn one file's bytes into text sections: .txt .md .pdf .html .csv .jsonl and Discord exports.

Documents (.md, .txt, .pdf, .html) become one section per heading (:mod:`ingest.structure`), their
hard-wrapped lines rejoined into paragraphs; records (.csv, .jsonl, exports) one section each.

A loader either returns sections (plus per-record problems it skipped, e.g. a malformed JSONL
line) or raises :class:`IngestError` when the whole file is unusable. Nothing here touches disk,
so the bot can feed Discord uploads (bytes) through the same code as the CLI.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from ingest.errors import IngestError
from ingest.structure import Part, html_parts, markdown_parts, pdf_parts, plain_parts

TEXT_TYPES = (".txt", ".md", ".markdown")
SUPPORTED = (*TEXT_TYPES, ".pdf", ".html", ".htm", ".csv", ".jsonl", ".json")

# JSONL records: which keys hold a question and its answer, tried in order.
_QA_KEYS = (("question", "answer"), ("instruction", "output"), ("prompt", "completion"), ("q", "a"))
_TEXT_KEYS = ("text", "content", "body")


@dataclass(frozen=True)
class Section:
    """A piece of a file's text with who wrote it and when, if the format says."""

    text: str
    author: str | None = None
    timestamp: str | None = None
    title: str | None = None  # the heading the text is under (cited with it)
    page: int | None = None  # a PDF's page number


@dataclass
class Loaded:
    """A loader's result: the sections, records skipped (human-readable), a Discord export's guild."""

    sections: list[Section] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    guild_id: str | None = None


def decode_text(name: str, data: bytes) -> str:
    """Bytes to text: UTF-8 (a BOM is fine); binary or other encodings raise a clear error."""
    if b"\x00" in data[:8192]:
        raise IngestError(f"{name}: looks like a binary file, not text; convert it to .txt, .md or .pdf")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise IngestError(
            f"{name}: is not UTF-8 text (bad byte at offset {error.start}); re-save it as UTF-8"
        ) from None


def _sections(parts: list[Part]) -> list[Section]:
    return [Section(part.text, title=part.title, page=part.page) for part in parts]


def _load_text(name: str, data: bytes) -> Loaded:
    text = decode_text(name, data)
    markdown = PurePath(name).suffix.lower() in (".md", ".markdown")
    return Loaded(_sections(markdown_parts(text) if markdown else plain_parts(text)))


def _load_pdf(name: str, data: bytes) -> Loaded:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as error:
        raise IngestError(
            f"{name}: not a readable PDF ({error}); re-export it or convert it to text"
        ) from None
    if not any(page.strip() for page in pages):
        raise IngestError(f"{name}: the PDF has no extractable text (a scan?); OCR it or give a text file")
    return Loaded(_sections(pdf_parts(pages)))


def _load_html(name: str, data: bytes) -> Loaded:
    return Loaded(_sections(html_parts(decode_text(name, data))))


def _load_csv(name: str, data: bytes) -> Loaded:
    loaded = Loaded()
    reader = csv.reader(io.StringIO(decode_text(name, data)))
    try:
        header = next(reader)
    except StopIteration:
        return loaded
    except csv.Error as error:
        raise IngestError(f"{name}: not valid CSV ({error})") from None
    header = [h.strip() for h in header]
    lower = [h.lower() for h in header]
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            loaded.problems.append(f"{name} line {reader.line_num}: not valid CSV ({error}); skipped")
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            loaded.problems.append(
                f"{name} line {reader.line_num}: {len(row)} fields but the header has {len(header)}; skipped"
            )
            continue
        record = dict(zip(lower, row, strict=True))
        text = _qa_text(record) or "\n".join(
            f"{h}: {v.strip()}" for h, v in zip(header, row, strict=True) if v.strip()
        )
        loaded.sections.append(
            Section(text, author=record.get("author") or None, timestamp=record.get("timestamp"))
        )
    return loaded


def _qa_text(record: dict[str, Any]) -> str | None:
    for q_key, a_key in _QA_KEYS:
        question, answer = record.get(q_key), record.get(a_key)
        if isinstance(question, str) and isinstance(answer, str) and question.strip() and answer.strip():
            extra = record.get("input") if q_key == "instruction" else None
            if isinstance(extra, str) and extra.strip():
                question = f"{question.strip()}\n{extra.strip()}"
            return f"Q: {question.strip()}\nA: {answer.strip()}"
    return None


def _load_jsonl(name: str, data: bytes) -> Loaded:
    loaded = Loaded()
    for number, line in enumerate(decode_text(name, data).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            loaded.problems.append(f"{name} line {number}: not valid JSON ({error.msg}); skipped")
            continue
        if not isinstance(record, dict):
            loaded.problems.append(f"{name} line {number}: expected a JSON object; skipped")
            continue
        text = _qa_text(record)
        if text is None:
            text = next(
                (record[k] for k in _TEXT_KEYS if isinstance(record.get(k), str) and record[k].strip()), None
            )
        if text is None:
            loaded.problems.append(
                f"{name} line {number}: no question/answer, instruction/output or text field; skipped"
            )
            continue
        author = record.get("author")
        timestamp = record.get("timestamp")
        loaded.sections.append(
            Section(
                text.strip(),
                author=str(author) if author else None,
                timestamp=str(timestamp) if timestamp else None,
            )
        )
    return loaded


def _load_discord(name: str, data: bytes) -> Loaded:
    try:
        export = json.loads(decode_text(name, data))
    except json.JSONDecodeError as error:
        raise IngestError(f"{name}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(export, dict) or not isinstance(export.get("messages"), list):
        raise IngestError(
            f"{name}: not a DiscordChatExporter export (no 'messages' list); "
            "for one record per line use .jsonl"
        )
    guild: dict[str, Any] = export["guild"] if isinstance(export.get("guild"), dict) else {}
    loaded = Loaded(guild_id=str(guild["id"]) if guild.get("id") is not None else None)
    for index, message in enumerate(export["messages"]):
        if not isinstance(message, dict):
            loaded.problems.append(f"{name} message {index}: not an object; skipped")
            continue
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            continue  # attachments, stickers, joins: nothing to retrieve
        author: dict[str, Any] = message["author"] if isinstance(message.get("author"), dict) else {}
        who = author.get("nickname") or author.get("name")
        text = f"{who}: {content.strip()}" if who else content.strip()
        loaded.sections.append(
            Section(text, author=str(who) if who else None, timestamp=message.get("timestamp") or None)
        )
    return loaded


_LOADERS: dict[str, Callable[[str, bytes], Loaded]] = {
    **dict.fromkeys(TEXT_TYPES, _load_text),
    ".pdf": _load_pdf,
    ".html": _load_html,
    ".htm": _load_html,
    ".csv": _load_csv,
    ".jsonl": _load_jsonl,
    ".json": _load_discord,
}


def load_document(name: str, data: bytes) -> Loaded:
    """Parse one file by its extension; raise :class:`IngestError` if it is unusable as a whole."""
    suffix = PurePath(name).suffix.lower()
    loader = _LOADERS.get(suffix)
    if loader is None:
        raise IngestError(
            f"{name}: unsupported file type {suffix or '(none)'}; supported: {', '.join(SUPPORTED)}"
        )
    if not data.strip():
        raise IngestError(f"{name}: the file is empty")
    return loader(name, data)
