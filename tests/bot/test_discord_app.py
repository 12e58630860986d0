"""The Discord bot built without connecting (bot/discord_app.py): its intents, and the services a
caller passes in used as given."""

from __future__ import annotations

from typing import Any

import pytest


def test_create_bot_builds_a_ready_unconnected_bot(bot_settings, bot_services) -> None:
    from bot.discord_app import create_bot

    bot = create_bot(bot_settings, **bot_services)

    assert not bot.is_ready() and bot.ws is None
    intents = bot.intents
    assert (
        intents.guilds
        and intents.messages
        and intents.message_content
        and intents.reactions
        and intents.members
    )
    assert bot.services.answer_service is bot_services["answer_service"]
    with pytest.raises(TypeError, match="unknown services"):
        create_bot(bot_settings, model=object())


def test_create_bot_uses_every_service_it_is_given(bot_settings, bot_services) -> None:
    """``adapters``, ``limits`` and ``pending_answers`` are services like the others: passed in, they
    are the bot's (they were accepted and then replaced by ones built from the settings)."""
    from bot.discord_app import create_bot
    from bot.usecases.limits import WriteLimits
    from bot.usecases.serving import GuildAdapters

    adapters = GuildAdapters(bot_services["runtime"], lambda guild: pytest.fail("not asked here"))
    limits = WriteLimits(per_minute=1)
    pending: set[int] = {42}
    given: dict[str, Any] = {"adapters": adapters, "limits": limits, "pending_answers": pending}
    bot = create_bot(bot_settings, **bot_services, **given)
    assert bot.services.adapters is adapters
    assert bot.services.limits is limits
    assert bot.services.pending_answers is pending
    built = create_bot(bot_settings, **bot_services)  # not given: built from the settings
    assert isinstance(built.services.adapters, GuildAdapters) and built.services.adapters is not adapters
    assert built.services.limits is not limits and built.services.pending_answers == set()
