"""CLI areas. Each module has ``register(subparsers)``; the order here is the order in ``--help``."""

from bot.commands import adapters_cmd, ask, bot_cmd, data, demo, kb, member, model

AREAS = [model, ask, kb, member, data, adapters_cmd, bot_cmd, demo]
