"""The values the feedback log returns. Plain frozen dataclasses: no database handles inside."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

# positive: a 👍 answer; corrected: an accepted correction; taught: a fact an owner imported
# (`loopbot dataset import`); negative: a 👎 answer (preference data, never a training target).
PairKind = Literal["positive", "corrected", "taught", "negative"]
PAIR_KINDS: tuple[PairKind, ...] = ("positive", "corrected", "taught", "negative")
TRAINING_KINDS: tuple[PairKind, ...] = ("positive", "corrected", "taught")


@dataclass(frozen=True)
class AnswerRecord:
    """One logged answer with its Discord messages and current vote counts."""

    id: int
    guild_id: str
    channel_id: str
    user_id: str
    question: str
    context: str
    chunk_ids: tuple[str, ...]
    prompt: str
    prompt_version: str
    adapter: str | None
    answer: str
    created_at: datetime
    message_ids: tuple[str, ...] = ()
    upvotes: int = 0
    downvotes: int = 0
    private: bool = False  # used the asker's personal records or was delivered privately


@dataclass(frozen=True)
class VoteResult:
    """The state of an answer after a vote: counts and which pairs it now yields."""

    answer_id: int
    user_id: str
    value: int
    present: bool
    changed: bool  # False when the call repeated what was already recorded
    upvotes: int
    downvotes: int
    positive: bool  # the answer currently yields a positive pair
    negative: bool  # ... a negative pair


@dataclass(frozen=True)
class CorrectionRecord:
    """A correction of an answer; ``accepted`` once trusted or voted up enough."""

    id: int
    answer_id: int
    author_id: str
    text: str
    message_id: str | None
    trusted: bool
    accepted: bool
    votes: int  # 👍 from members other than the author
    votes_needed: int | None  # None until someone votes (or add_correction is told)
    created_at: datetime
    accepted_at: datetime | None
    private: bool = False  # written where only the asker sees it (a DM, an ephemeral answer)

    @property
    def status(self) -> Literal["accepted", "pending"]:
        """``"accepted"`` or ``"pending"``."""
        return "accepted" if self.accepted else "pending"


@dataclass(frozen=True)
class Pair:
    """A derived (or imported) instruction/input/output example."""

    id: int
    kind: PairKind
    instruction: str
    input: str
    output: str
    user_id: str | None  # the asker whose question/context it contains; imported: the member (or None)
    answer_id: int | None
    created_at: datetime
    author_id: str | None = None  # the correction's author for "corrected" pairs
    correction_id: int | None = None
    source: str = "discord"
    guild_id: str | None = None  # the guild whose adapter it teaches; None: imported, every guild's
    owner_id: str | None = None  # set: a personal pair, only ever for this member's own adapter

    def to_alpaca(self) -> dict[str, str]:
        """The pair as an Alpaca record ``{"instruction", "input", "output"}``."""
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


@dataclass(frozen=True)
class FeedbackStats:
    """Counts over the log (one guild, or everything)."""

    answers: int
    upvotes: int
    downvotes: int
    corrections: int
    pending: int
    accepted: int
    pairs: dict[str, int] = field(default_factory=dict)  # by kind, every kind present (0 if none)
    forgotten_pairs: int = 0
    withdrawn_pairs: int = 0  # left when their member turned learning off (feedback/privacy.py)
    retention_removed: int = 0  # unvoted, uncorrected answers deleted by retention, ever
    retention_last_run: str | None = None  # when retention last deleted any (ISO, UTC)


@dataclass(frozen=True)
class ForgetReport:
    """What :meth:`FeedbackLog.forget_user` deleted."""

    user_id: str
    answers: int
    corrections: int
    votes: int
    pair_ids: tuple[int, ...]

    @property
    def pairs(self) -> int:
        """Number of pairs deleted."""
        return len(self.pair_ids)


@dataclass(frozen=True)
class ImportReport:
    """What :meth:`FeedbackLog.import_pairs` did with each row."""

    source: str
    imported: int
    duplicates: int  # already in the log (same instruction, input and output)
    forgotten: int  # refused: a member asked for this content to be forgotten
    problems: tuple[str, ...] = ()  # one line per rejected row, saying which and why
