"""The errors a member or operator can fix: both front ends show their message, never a traceback."""

from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    """Every library's user-facing base error, plus invalid settings.

    Imported lazily so that the CLI's ``--help`` does not import the libraries."""
    from adapters.errors import AdapterError
    from bot.settings import SettingsError
    from feedback.errors import FeedbackError
    from ingest.errors import IngestError
    from knowledge.errors import KnowledgeError

    return (SettingsError, AdapterError, FeedbackError, IngestError, KnowledgeError)
