"""Errors the operator can fix; the CLI prints them without a traceback."""


class FeedbackError(Exception):
    """A feedback-log or dataset problem with a message saying what to do."""
