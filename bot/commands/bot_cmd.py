"""CLI area ``bot``: ``loopbot bot run`` connects the Discord bot with ``DISCORD_TOKEN``."""

from __future__ import annotations

import argparse
import logging

from bot.settings import Settings, SettingsError, load_secrets

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands."""
    parser = subparsers.add_parser("bot", help="Run the Discord bot.")
    actions = parser.add_subparsers(dest="bot_command", required=True, metavar="ACTION")
    run = actions.add_parser(
        "run",
        help="Connect to Discord with DISCORD_TOKEN and answer until interrupted.",
        description="Load the model and the stores, connect with DISCORD_TOKEN, sync slash commands, answer.",
    )
    run.set_defaults(handler=run_bot)


def run_bot(args: argparse.Namespace, settings: Settings) -> int:
    """Check the token first (no model load for a missing one), then build the bot and run it."""
    import aiohttp
    import discord

    secrets = load_secrets()
    from bot.discord_app import create_bot

    log.info("loading the model and the stores (data dir %s)", settings.data_dir)
    bot = create_bot(settings)
    try:
        # log_handler=None: the CLI already configured logging; don't let discord.py add a second one.
        bot.run(secrets.discord_token.get_secret_value(), log_handler=None)
    except discord.LoginFailure:
        raise SettingsError(
            "Discord rejected DISCORD_TOKEN. Copy the token again from the developer portal "
            "(Bot -> Reset Token) into .env."
        ) from None
    except (aiohttp.ClientConnectionError, OSError) as error:
        raise SettingsError(
            f"Cannot reach Discord ({error}). Check the network connection or proxy; the bot needs "
            "outbound HTTPS to discord.com and gateway.discord.gg."
        ) from None
    except discord.PrivilegedIntentsRequired:
        raise SettingsError(
            "Discord refused the privileged intents. In the developer portal, Bot -> Privileged Gateway "
            "Intents, enable MESSAGE CONTENT and SERVER MEMBERS, then start again."
        ) from None
    return 0
