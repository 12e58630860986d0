"""Ingestion end to end: paths or bytes → chunks (with limits and problems) → the knowledge base.

Files are loaded one by one; a file that cannot be used becomes a line in ``problems`` and the
others go on. Limits (file size, file count) are injected by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.chunking import chunk_sections
from ingest.errors import IngestError
from ingest.loaders import SUPPORTED, load_document
from knowledge.types import AddReport, Chunk, Scope


@dataclass(frozen=True)
class IngestLimits:
    """Caps that keep one ingest from exhausting the machine."""

    max_file_mb: float = 10.0
    max_files: int = 100
    chunk_size: int = 800


@dataclass
class IngestReport:
    """What was read: chunks per source, files read, and human-readable problems (skipped input)."""

    by_source: dict[str, list[Chunk]] = field(default_factory=dict)
    files: int = 0
    problems: list[str] = field(default_factory=list)
    stored: AddReport | None = None

    @property
    def chunks(self) -> list[Chunk]:
        """Every chunk, in source order."""
        return [chunk for chunks in self.by_source.values() for chunk in chunks]

    def summary(self) -> str:
        """One line for the CLI and the bot."""
        line = f"{self.files} file(s), {len(self.chunks)} chunk(s)"
        if self.stored is not None:
            s = self.stored
            line += f": {s.added} added, {s.unchanged} unchanged, {s.replaced} old removed"
        if self.problems:
            line += f"; {len(self.problems)} problem(s)"
        return line


def _check_scope(scope: str, guild_id: str, owner_id: str | None) -> None:
    if scope not in ("community", "personal"):
        raise IngestError(f"scope must be 'community' or 'personal', got {scope!r}")
    if scope == "personal" and not owner_id:
        raise IngestError("personal records need an owner: pass the member's user id (--owner)")
    if scope == "community" and owner_id:
        raise IngestError("community posts have no owner: drop --owner, or use --scope personal")
    if not guild_id:
        raise IngestError("say which guild the knowledge is for (--guild)")


def collect_files(paths: Sequence[Path | str], *, max_files: int) -> list[tuple[Path, str]]:
    """Expand directories (recursively, supported types only) to ``(path, source name)`` pairs.

    A file named directly keeps its file name as source; files found in a directory are named
    relative to that directory's parent, so ``docs/a.md`` and ``faq/a.md`` stay distinct.
    """
    found: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix.lower() in SUPPORTED and not child.name.startswith("."):
                    found.append((child, child.relative_to(path.parent).as_posix()))
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise IngestError(f"{path}: no such file or directory")
    if len(found) > max_files:
        raise IngestError(
            f"{len(found)} files to ingest but the limit is {max_files}: ingest fewer at once "
            "or raise the limit (LOOPBOT_KB_MAX_FILES)"
        )
    return found


def _add_file(
    report: IngestReport,
    name: str,
    source: str,
    data: bytes,
    scope: Scope,
    guild_id: str,
    owner_id: str | None,
    limits: IngestLimits,
) -> None:
    size_mb = len(data) / 1_000_000
    if size_mb > limits.max_file_mb:
        report.problems.append(
            f"{name}: {size_mb:.1f} MB is over the {limits.max_file_mb:g} MB limit; split it or raise "
            "the limit (LOOPBOT_KB_MAX_FILE_MB); skipped"
        )
        return
    try:
        loaded = load_document(name, data)
    except IngestError as error:
        report.problems.append(f"{error}; skipped")
        return
    report.problems.extend(loaded.problems)
    if loaded.guild_id and loaded.guild_id != guild_id:
        report.problems.append(
            f"{name}: this Discord export is from guild {loaded.guild_id}, not {guild_id}; "
            f"ingest it with --guild {loaded.guild_id}; skipped"
        )
        return
    chunks = chunk_sections(
        loaded.sections,
        source=source,
        scope=scope,
        guild_id=guild_id,
        owner_id=owner_id,
        chunk_size=limits.chunk_size,
    )
    if not chunks:
        report.problems.append(f"{name}: no text found; skipped")
        return
    report.files += 1
    report.by_source.setdefault(source, []).extend(chunks)


def load_files(
    paths: Sequence[Path | str],
    *,
    scope: Scope,
    guild_id: str,
    owner_id: str | None = None,
    limits: IngestLimits | None = None,
    progress: bool = False,
) -> IngestReport:
    """Read files and directories into chunks; unusable files are reported in ``problems``."""
    from tqdm import tqdm

    limits = limits or IngestLimits()
    _check_scope(scope, guild_id, owner_id)
    report = IngestReport()
    files = collect_files(paths, max_files=limits.max_files)
    for path, source in tqdm(files, desc="reading", unit="file", disable=not progress or len(files) < 2):
        try:
            # Read at most one byte over the limit: a huge file is rejected without loading it.
            with open(path, "rb") as handle:
                data = handle.read(int(limits.max_file_mb * 1_000_000) + 1)
        except OSError as error:
            report.problems.append(f"{path}: cannot read it ({error.strerror}); skipped")
            continue
        if len(data) > limits.max_file_mb * 1_000_000:
            data_size = path.stat().st_size
            report.problems.append(
                f"{path.name}: {data_size / 1_000_000:.1f} MB is over the {limits.max_file_mb:g} MB limit; "
                "split it or raise the limit (LOOPBOT_KB_MAX_FILE_MB); skipped"
            )
            continue
        _add_file(report, path.name, source, data, scope, guild_id, owner_id, limits)
    return report


def load_bytes(
    name: str,
    data: bytes,
    *,
    scope: Scope,
    guild_id: str,
    owner_id: str | None = None,
    limits: IngestLimits | None = None,
    source: str | None = None,
) -> IngestReport:
    """Read one upload (e.g. a Discord attachment) into chunks; ``source`` defaults to ``name``."""
    limits = limits or IngestLimits()
    _check_scope(scope, guild_id, owner_id)
    report = IngestReport()
    _add_file(report, name, source or name, data, scope, guild_id, owner_id, limits)
    return report


def text_chunks(
    text: str,
    *,
    source: str,
    scope: Scope,
    guild_id: str,
    owner_id: str | None = None,
    limits: IngestLimits | None = None,
) -> list[Chunk]:
    """Chunks of a short text such as ``/remember`` or an accepted correction."""
    from ingest.loaders import Section

    limits = limits or IngestLimits()
    _check_scope(scope, guild_id, owner_id)
    if not text.strip():
        raise IngestError("nothing to store: the text is empty")
    return chunk_sections(
        [Section(text.strip())],
        source=source,
        scope=scope,
        guild_id=guild_id,
        owner_id=owner_id,
        chunk_size=limits.chunk_size,
    )


def store_report(kb: Any, report: IngestReport, *, progress: bool = False) -> IngestReport:
    """Write a report's chunks into ``kb``, one source at a time (an edited source replaces its old chunks)."""
    from tqdm import tqdm

    total = AddReport()
    with tqdm(total=len(report.chunks), desc="embedding", unit="chunk", disable=not progress) as bar:
        for source, chunks in report.by_source.items():
            first = chunks[0]
            total.merge(
                kb.replace_source(
                    source, chunks, guild_id=first.guild_id, owner_id=first.owner_id, on_progress=bar.update
                )
            )
    report.stored = total
    return report


def ingest_paths(
    kb: Any,
    paths: Iterable[Path | str],
    *,
    scope: Scope,
    guild_id: str,
    owner_id: str | None = None,
    limits: IngestLimits | None = None,
    progress: bool = False,
) -> IngestReport:
    """:func:`load_files` then :func:`store_report`."""
    report = load_files(
        list(paths), scope=scope, guild_id=guild_id, owner_id=owner_id, limits=limits, progress=progress
    )
    return store_report(kb, report, progress=progress)
