"""The feedback library: the SQLite log of answers, votes and corrections, and Alpaca datasets.

Never imports discord, never reads settings: the database path is passed in.
"""

from feedback.errors import FeedbackError
from feedback.log import FeedbackLog
from feedback.records import (
    PAIR_KINDS,
    TRAINING_KINDS,
    AnswerRecord,
    CorrectionRecord,
    FeedbackStats,
    ForgetReport,
    ImportReport,
    Pair,
    VoteResult,
)

__all__ = [
    "PAIR_KINDS",
    "TRAINING_KINDS",
    "AnswerRecord",
    "CorrectionRecord",
    "FeedbackError",
    "FeedbackLog",
    "FeedbackStats",
    "ForgetReport",
    "ImportReport",
    "Pair",
    "VoteResult",
]
