"""A tiny, dependency-free PDF writer for the benchmarks' own test documents.

The answer-quality benchmark needs a PDF among its documents, because communities share handbooks
as PDFs and the ingest path for them (text extraction, page by page) must be measured too. Rather
than commit a binary file, the bench holds the handbook as plain text
(``bench/data/answer_quality_real/handbook.txt``, pages separated by form-feed lines) and writes
the PDF from it at run time with this module: one page per text page, the standard Type1
Helvetica font at 11 pt, one ``Tj`` per line, so ``pypdf`` extracts the lines as they are wrapped.
Text must be Latin-1 encodable (WinAnsi covers ``£`` and accented letters).
"""

from __future__ import annotations

from pathlib import Path

PAGE_W, PAGE_H = 612, 792  # US Letter, in points
MARGIN, FONT_SIZE, LEADING = 72, 11, 14
MAX_LINES = (PAGE_H - 2 * MARGIN) // LEADING


def _escape(line: str) -> bytes:
    raw = line.encode("latin-1")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def _content(lines: list[str]) -> bytes:
    ops = [f"BT /F1 {FONT_SIZE} Tf {LEADING} TL {MARGIN} {PAGE_H - MARGIN} Td".encode()]
    for i, line in enumerate(lines):
        if i:
            ops.append(b"T*")
        if line.strip():
            ops.append(b"(" + _escape(line) + b") Tj")
    ops.append(b"ET")
    return b"\n".join(ops) + b"\n"


def write_pdf(pages: list[list[str]], path: str | Path) -> Path:
    """Write ``pages`` (each a list of text lines) as a PDF at ``path``; returns the path."""
    path = Path(path)
    path.write_bytes(pdf_bytes(pages))
    return path


def pdf_bytes(pages: list[list[str]]) -> bytes:
    """``pages`` (each a list of text lines) as the bytes of a PDF."""
    if not pages:
        raise ValueError("a PDF needs at least one page")
    for n, lines in enumerate(pages, 1):
        if len(lines) > MAX_LINES:
            raise ValueError(f"page {n} has {len(lines)} lines, at most {MAX_LINES} fit")
    n_pages = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n_pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, lines in enumerate(pages):
        stream = _content(lines)
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"endstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{num} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{off:010d} 00000 n \n".encode() for off in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def handbook_pages(text: str) -> list[list[str]]:
    """Split text into pages on lines holding only a form feed; trailing blank lines are dropped."""
    pages: list[list[str]] = [[]]
    for line in text.split("\n"):  # not splitlines(): it treats the form feed itself as a line break
        if "\f" in line and not line.strip():
            pages.append([])
        else:
            pages[-1].append(line.rstrip())
    for lines in pages:
        while lines and not lines[-1].strip():
            lines.pop()
    return [lines for lines in pages if lines]
