"""Which adapters answer a request: the one value passed from the router to the engine.

A request is answered by the bare base model, by one adapter, or by several stacked (a member's own
adapter over the guild's: their LoRA deltas add up). :class:`AdapterChoice` names them, bottom first.
:data:`ACTIVE` is the choice that follows the runtime: whatever adapter is active when the request is
submitted. A runtime resolves a choice once, at submission, so a swap never changes a request
already queued or in flight.

Who decides what: the bot's use case (``bot.usecases.serving.GuildAdapters``) chooses the stack for a
guild and a member; :class:`adapters.serving.QuestionRouting` narrows it for one question (a
:data:`Route`); the runtime (:class:`adapters.serving.ModelRuntime`) answers with what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class AdapterChoice:
    """The adapters a request is answered with, bottom first (empty: the bare base model), or, with
    ``follows_active``, the runtime's active adapter at submission (:data:`ACTIVE`)."""

    names: tuple[str, ...] = ()
    follows_active: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.names, tuple) or not all(isinstance(n, str) and n for n in self.names):
            raise TypeError(f"AdapterChoice names must be a tuple of adapter names, got {self.names!r}")
        if self.follows_active and self.names:
            raise TypeError("ACTIVE names no adapter: it follows the runtime's active one")

    @classmethod
    def of(cls, adapter: AdapterChoice | str | None) -> AdapterChoice:
        """A choice from the shorthands callers may pass a runtime: a choice as is, one adapter's
        name, or None for the bare base model."""
        if isinstance(adapter, AdapterChoice):
            return adapter
        if adapter is None:
            return BASE
        if isinstance(adapter, str):
            return cls((adapter,))
        raise TypeError(f"an adapter choice is an AdapterChoice, a name or None, not {adapter!r}")

    def resolve(self, active: str | None) -> AdapterChoice:
        """This choice with :data:`ACTIVE` replaced by ``active`` (None: the bare base model)."""
        if not self.follows_active:
            return self
        return AdapterChoice((active,)) if active else BASE

    @property
    def top(self) -> str | None:
        """The most specific adapter of the stack (None: the base model)."""
        return self.names[-1] if self.names else None

    def up_to(self, depth: int) -> AdapterChoice:
        """The stack's ``depth`` bottom adapters (0: the bare base model)."""
        return AdapterChoice(self.names[:depth])

    def label(self) -> str:
        """The stack as reports show it: ``base``, ``v0002`` or ``g1-v0001+m7-v0001``."""
        return "active" if self.follows_active else "+".join(self.names) or "base"


ACTIVE = AdapterChoice(follows_active=True)  # the adapter active when the request is submitted
BASE = AdapterChoice()  # the bare base model

# What of a chosen stack answers a question (see :class:`adapters.serving.QuestionRouting`):
# ``route(choice, question) -> choice``.
Route = Callable[[AdapterChoice, str], AdapterChoice]


def unrouted(choice: AdapterChoice, question: str) -> AdapterChoice:
    """The :data:`Route` of a runtime without routing: the whole stack answers every question."""
    return choice
