"""Serving each guild its own adapter, and keeping the running bot in step with the registries.

Every guild learns on its own (its pairs, versions, active pointer, gate and schedule), so the bot
answers a guild's questions with that guild's active adapter, several loaded at once on one
runtime. :class:`GuildAdapters` is the bot's view of that; the CLI changes a registry on disk and
:meth:`GuildAdapters.refresh` (run every few seconds by the bot) brings the runtime in line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from adapters.errors import AdapterError
from adapters.swap import AdapterRouter

if TYPE_CHECKING:
    from pathlib import Path

    from adapters.registry import AdapterRegistry, AdapterVersion
    from adapters.runtime import Runtime
    from feedback.log import FeedbackLog

log = logging.getLogger(__name__)


class GuildAdapters:
    """Which adapter answers each guild, on the bot's runtime, from each guild's registry."""

    def __init__(self, runtime: Runtime, registry_for: Callable[[str], AdapterRegistry]) -> None:
        self.runtime = runtime
        self.registry_for = registry_for
        self.router = AdapterRouter(runtime)
        self._broken: dict[str, str] = {}  # guild -> why its active adapter cannot be served (warned once)

    def adapter_for(self, guild_id: str | None) -> str | None:
        """The adapter answering ``guild_id`` (None: the base model; a DM has no guild)."""
        if guild_id is None:
            return None
        if guild_id not in self.router.scopes():
            self.sync(guild_id)  # first question from this guild since start: read its registry
        return self.router.adapter_for(guild_id)

    def sync(self, guild_id: str) -> str | None:
        """Serve the guild's active version. One that cannot be served (missing, corrupt, trained for
        another base) never stops the bot: the guild gets the base model and a warning says why."""
        try:
            served = self.router.sync(guild_id, self.registry_for(guild_id))
        except AdapterError as error:
            # The registry watch retries every few seconds: say it once, not at every look.
            report = log.warning if self._broken.get(guild_id) != str(error) else log.debug
            report("guild %s: serving the bare base model: %s", guild_id, error)
            self._broken[guild_id] = str(error)
            self.router.swap(guild_id, None)
            return None
        self._broken.pop(guild_id, None)
        return served

    def refresh(self, guild_ids: Iterable[str]) -> dict[str, str | None]:
        """Sync every given guild (and every guild served so far); what each serves now."""
        return {guild: self.sync(guild) for guild in {*guild_ids, *self.router.scopes()}}

    def swap(self, guild_id: str, version: AdapterVersion | None) -> None:
        """Answer ``guild_id`` with ``version`` (None: the base model) from now on."""
        self.router.swap(guild_id, version)


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
