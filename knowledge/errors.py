"""Errors the operator can fix; the CLI prints them without a traceback."""


class KnowledgeError(Exception):
    """A knowledge-base problem with a message saying what to do."""
