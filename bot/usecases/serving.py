"""Serving use cases: which adapter answers each guild, promote, roll back, and retiring versions.

Every guild learns on its own (its pairs, versions, active pointer, gate and schedule), so the bot
answers a guild's questions with that guild's active adapter, several loaded at once on one
runtime. :class:`GuildAdapters` is the bot's view of that: it chooses the
:class:`~adapters.serving.AdapterChoice` of each question. The CLI changes a registry on disk and
:meth:`GuildAdapters.refresh` (run every few seconds by the bot) brings the runtime in line.
:func:`promote`, :func:`rollback`, :func:`retire_forgotten` and :func:`serve_active` change what a
registry serves, for the bot's commands, the CLI and the training cycle alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from adapters.errors import AdapterError
from adapters.serving import AdapterChoice, ServedAdapters, swap_to, sync_with_registry

if TYPE_CHECKING:
    from pathlib import Path

    from adapters.registry import AdapterRegistry, AdapterVersion
    from adapters.serving import Runtime
    from feedback.log import FeedbackLog

log = logging.getLogger(__name__)


MEMBER_SCOPE = "member:"  # served scopes of members' own adapters (guild scopes are bare ids)


class GuildAdapters:
    """Which adapters answer each guild, and each member privately, on the bot's runtime.

    A guild's questions get its active adapter. A member's own adapter (trained on their personal
    pairs, :func:`adapters.registry.member_registry`) is stacked on it, but only for answers that
    member alone sees (a DM or a private answer): what it learned from their personal records never
    reaches anyone else."""

    def __init__(
        self,
        runtime: Runtime,
        registry_for: Callable[[str], AdapterRegistry],
        member_registry_for: Callable[[str], AdapterRegistry] | None = None,
    ) -> None:
        self.runtime = runtime
        self.registry_for = registry_for
        self.member_registry_for = member_registry_for
        self.served = ServedAdapters(runtime)
        self._broken: dict[str, str] = {}  # scope -> why its active adapter cannot be served (warned once)

    def choice_for(self, guild_id: str | None, member_id: str | None = None) -> AdapterChoice:
        """What answers a question in ``guild_id`` (None: a DM, the base model) from ``member_id``
        when the answer is theirs alone (pass None for a public answer): the guild's adapter, with
        the member's own stacked on it when they have one."""
        names = []
        if guild_id is not None:
            if guild_id not in self.served.scopes():
                self.sync(guild_id)  # first question from this guild since start: read its registry
            names.append(self.served.name_for(guild_id))
        member_registry_for = self.member_registry_for
        if member_id is not None and member_registry_for is not None:
            scope = MEMBER_SCOPE + member_id
            if scope not in self.served.scopes():
                self._sync(scope, partial(member_registry_for, member_id))
            names.append(self.served.name_for(scope))
        return AdapterChoice(tuple(name for name in names if name is not None))

    def sync(self, guild_id: str) -> str | None:
        """Serve the guild's active version. One that cannot be served (missing, corrupt, trained for
        another base) never stops the bot: the guild gets the base model and a warning says why."""
        return self._sync(guild_id, lambda: self.registry_for(guild_id))

    def _sync(self, scope: str, registry: Callable[[], AdapterRegistry]) -> str | None:
        try:
            served = self.served.sync(scope, registry())
        except AdapterError as error:
            # The registry watch retries every few seconds: say it once, not at every look.
            report = log.warning if self._broken.get(scope) != str(error) else log.debug
            who = (
                f"member {scope[len(MEMBER_SCOPE) :]}" if scope.startswith(MEMBER_SCOPE) else f"guild {scope}"
            )
            report("%s: serving the bare base model: %s", who, error)
            self._broken[scope] = str(error)
            self.served.swap(scope, None)
            return None
        self._broken.pop(scope, None)
        return served

    def refresh(self, guild_ids: Iterable[str]) -> dict[str, str | None]:
        """Sync every given guild and every guild and member served so far; what each serves now."""
        member_registry_for = self.member_registry_for
        served = {}
        for scope in {*guild_ids, *self.served.scopes()}:
            if not scope.startswith(MEMBER_SCOPE):
                served[scope] = self.sync(scope)
            elif member_registry_for is not None:
                served[scope] = self._sync(scope, partial(member_registry_for, scope[len(MEMBER_SCOPE) :]))
        return served

    def swap(self, guild_id: str, version: AdapterVersion | None) -> None:
        """Answer ``guild_id`` with ``version`` (None: the base model) from now on."""
        self.served.swap(guild_id, version)

    def swap_member(self, member_id: str, version: AdapterVersion | None) -> None:
        """Answer ``member_id``'s private questions with ``version`` stacked (None: none of their own)."""
        self.served.swap(MEMBER_SCOPE + member_id, version)

    def drop_member(self, member_id: str) -> None:
        """A forgotten member: their own adapter is no longer served and leaves the runtime."""
        self.served.drop(MEMBER_SCOPE + member_id)


def known_guilds(adapters_dir: Path, feedback_log: FeedbackLog) -> list[str]:
    """Every guild with logged answers or an adapter registry."""
    from adapters.registry import guild_ids

    return sorted({*feedback_log.guild_ids(), *guild_ids(adapters_dir)})


def resolve_guild(adapters_dir: Path, feedback_log: FeedbackLog, requested: str | None) -> str:
    """The guild a CLI command acts on: ``requested``, or the only guild there is.

    An operator with one guild never has to say which; with several, the message lists them."""
    if requested:
        if not str(requested).isdigit():
            raise AdapterError(f"Invalid guild id {requested!r}: pass the Discord server id (digits).")
        return str(requested)
    guilds = known_guilds(adapters_dir, feedback_log)
    if len(guilds) == 1:
        return guilds[0]
    if not guilds:
        raise AdapterError("No server has used loopbot yet: pass --guild ID (the Discord server id).")
    raise AdapterError(f"loopbot serves several servers; pass --guild with one of: {', '.join(guilds)}.")


def adopt_legacy_adapters(adapters_dir: Path, feedback_log: FeedbackLog) -> str | None:
    """Give the adapters trained before per-guild learning to the one guild they can belong to.

    With exactly one known guild, its registry takes over every old version and the active pointer
    (nothing is lost). With several, the old versions mixed every guild's pairs: they stay where
    they are, unserved, and a warning says so. Returns the adopting guild, if any."""
    from adapters.registry import AdapterRegistry, adopt_legacy_versions

    if not AdapterRegistry(adapters_dir).versions():
        return None
    guilds = sorted(set(feedback_log.guild_ids()))
    if len(guilds) == 1:
        moved = adopt_legacy_versions(adapters_dir, guilds[0])
        if moved:
            log.info("moved %d adapter version(s) into guild %s's registry", moved, guilds[0])
        return guilds[0]
    log.warning(
        "%s holds adapter versions trained on several servers' pairs; each server now trains its own "
        "(they are not served). Move them into %s/guilds/<server id>/ by hand to keep one.",
        adapters_dir,
        adapters_dir,
    )
    return None


def promote(
    registry: AdapterRegistry,
    version: str,
    *,
    forgotten_pair_ids: set[int] | frozenset[int] = frozenset(),
    serve: Callable[[AdapterVersion | None], Any] | None = None,
) -> AdapterVersion:
    """Make ``version`` the active adapter and, given ``serve`` (the running runtime's swap), answer
    with it from now on. A version trained on a forgotten member's pairs is refused.

    Requests already queued keep the adapter they were submitted with."""
    target = registry.get(version)
    stale = target.forgotten_pairs(forgotten_pair_ids)
    if stale:
        raise AdapterError(
            f"{target.version} was trained on {len(stale)} pair(s) of a member who asked to be forgotten "
            "or not to be learned from, "
            "so it can no longer be served. Promote a newer version or retrain (`loopbot train`)."
        )
    promoted = registry.promote(target.version)
    if serve is not None:
        serve(promoted)
    return promoted


def rollback(
    registry: AdapterRegistry,
    *,
    forgotten_pair_ids: set[int] | frozenset[int] = frozenset(),
    serve: Callable[[AdapterVersion | None], Any] | None = None,
) -> AdapterVersion | None:
    """Re-activate the previously active version (None: the bare base model) and serve it. Versions
    trained on a forgotten member's pairs are passed over."""
    previous = registry.rollback()
    while previous is not None and previous.forgotten_pairs(forgotten_pair_ids):
        previous = registry.rollback()
    if serve is not None:
        serve(previous)
    return previous


def retire_forgotten(
    registry: AdapterRegistry, forgotten_pair_ids: set[int]
) -> tuple[bool, AdapterVersion | None]:
    """After a forget: scrub the stored data that held the forgotten pairs, and if the active version
    was trained on any, make the newest version without them active (or the bare base model).

    Returns ``(changed, the version now active)`` (None: the base model)."""
    registry.scrub_pairs({str(i) for i in forgotten_pair_ids})
    active = registry.active()
    if active is None or not active.forgotten_pairs(forgotten_pair_ids):
        return False, active
    clean = [v for v in registry.list() if not v.forgotten_pairs(forgotten_pair_ids)]
    if clean:
        return True, registry.promote(clean[-1].version)
    registry.deactivate("forget")
    return True, None


def serve_active(runtime: Runtime, registry: AdapterRegistry) -> str | None:
    """Make ``runtime`` serve the registry's active version; the name served (None: the base model).

    A version that cannot be served (missing, corrupt, trained for another base) never stops the
    bot or the CLI from answering: the bare base model is served and a warning says why."""
    try:
        return sync_with_registry(runtime, registry)
    except AdapterError as error:
        log.warning("serving the bare base model: %s", error)
        swap_to(runtime, None)
        return None
