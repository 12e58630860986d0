"""Errors the operator can fix; the CLI prints them without a traceback."""


class IngestError(Exception):
    """An ingestion problem with a message saying what to do."""
