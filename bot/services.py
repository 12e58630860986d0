"""The services the Discord cogs call, typed. Built by :func:`bot.discord_app.create_bot`.

Cogs receive a :class:`Services` at construction and never import the bot class or one another,
so the feature areas stay independent and mypy checks every call they make.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bot.usecases.limits import WriteLimits

if TYPE_CHECKING:
    from adapters.registry import AdapterRegistry
    from adapters.serving import Runtime
    from bot.settings import Settings
    from bot.usecases.serving import GuildAdapters
    from feedback.log import FeedbackLog
    from knowledge.chain import AnswerService
    from knowledge.store import KnowledgeBase

__all__ = ["PersonalProbe", "Services", "Trainer"]


class Trainer(Protocol):
    """One guild's training cycle (or, with ``member_id``, that member's own adapter's) as the bot
    runs it, in a worker thread (the training itself is a subprocess).

    ``progress`` receives the cycle's events; ``if_needed`` (the schedule) trains only when enough
    new pairs exist. Returns something with a ``summary()`` (a ``CycleReport``) or a sentence."""

    def __call__(
        self, progress: Callable[[Any], None], if_needed: bool, guild_id: str, member_id: str | None = None
    ) -> Any: ...


# (question, user_id, guild_id) -> whether retrieval returns the asker's personal records.
PersonalProbe = Callable[[str, str, str], bool]


@dataclass
class Services:
    """Everything the cogs call; every field can be injected (tests pass real parts on temp dirs)."""

    settings: Settings
    answer_service: AnswerService
    knowledge_base: KnowledgeBase
    feedback_log: FeedbackLog
    runtime: Runtime | None = None
    # Each guild's adapter registry (versions, active pointer); the adapters dir's layout is the registry's.
    registry_for: Callable[[str], AdapterRegistry] | None = None
    # Which adapter answers each guild on ``runtime``.
    adapters: GuildAdapters | None = None
    trainer: Trainer | None = None
    personal_probe: PersonalProbe | None = None
    # Per-member bounds on the write paths, from ``LOOPBOT_DISCORD_WRITE_LIMIT_PER_MINUTE``.
    limits: WriteLimits = field(init=False)
    # Ids of the bot's messages whose answer is still being written (not logged yet): a vote on one
    # waits for the ``loopbot_answer`` event instead of being dropped.
    pending_answers: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.limits = WriteLimits(self.settings.discord.write_limit_per_minute)


class HasServices(Protocol):
    """A client that carries the services (``LoopBot``): what a persistent view reaches from an interaction."""

    services: Services
