"""loopbot's composition root: settings, wiring, the CLI and the Discord bot.

This is the only package that imports discord; importing it connects nothing and loads no model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from discord.ext import commands

    from bot.settings import Settings


def create_bot(settings: Settings | None = None, **overrides: Any) -> commands.Bot:
    """Build the Discord bot from settings (environment / ``.env`` when None) without connecting."""
    from bot.discord_app import create_bot as _create_bot

    return _create_bot(settings, **overrides)
