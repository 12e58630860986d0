"""Errors the operator can fix; the CLI prints them without a traceback."""


class AdapterError(Exception):
    """A model or adapter problem with a message saying what to do."""
