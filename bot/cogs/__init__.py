"""The bot's feature areas, one cog each. ``LoopBot.setup_hook`` adds them in this order.

Every cog is built as ``Cog(bot, services)``: it reaches Discord through ``bot`` and everything
else through the typed :class:`bot.services.Services`, and no cog imports another. What they share
(permission checks, views, delivery, the forget dialog, progress text) is in the ``_private``
modules; :func:`channel_refusal` is also the command tree's check.
"""

from bot.cogs._common import channel_refusal
from bot.cogs.admin import AdminCog
from bot.cogs.ask import AskCog
from bot.cogs.feedback import FeedbackCog
from bot.cogs.help import HelpCog
from bot.cogs.knowledge import KnowledgeCog
from bot.cogs.privacy import PrivacyCog

COGS = [AskCog, FeedbackCog, KnowledgeCog, AdminCog, PrivacyCog, HelpCog]

__all__ = [
    "COGS",
    "AdminCog",
    "AskCog",
    "FeedbackCog",
    "HelpCog",
    "KnowledgeCog",
    "PrivacyCog",
    "channel_refusal",
]
