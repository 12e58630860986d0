"""The bot's feature areas, one cog each. ``LoopBot.setup_hook`` adds them in this order."""

from bot.cogs.admin import AdminCog
from bot.cogs.ask import AskCog
from bot.cogs.feedback import FeedbackCog
from bot.cogs.knowledge import KnowledgeCog

COGS = [AskCog, FeedbackCog, KnowledgeCog, AdminCog]

__all__ = ["COGS", "AdminCog", "AskCog", "FeedbackCog", "KnowledgeCog"]
