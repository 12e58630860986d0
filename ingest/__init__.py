"""ingest library: files and uploads → chunks with provenance, with limits and problem reports."""

from ingest.pipeline import (
    IngestLimits,
    IngestReport,
    ingest_paths,
    load_bytes,
    load_files,
    store_report,
    text_chunks,
)

__all__ = [
    "IngestLimits",
    "IngestReport",
    "ingest_paths",
    "load_bytes",
    "load_files",
    "store_report",
    "text_chunks",
]
