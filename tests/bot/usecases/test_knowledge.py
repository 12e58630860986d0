"""The knowledge use cases (bot/usecases/knowledge.py): remember a record, forget a member."""

from __future__ import annotations

from bot.usecases import knowledge as knowledge_uc
from tests.bot.usecases.conftest import ASKER, GUILD


def test_remember_and_forget_member(kb, log, answer_in) -> None:
    assert (
        knowledge_uc.remember(
            kb, "Mochi sneezed twice in March.", guild_id=GUILD, owner_id=ASKER, created="2026-03-01T10:00:00"
        )
        == 1
    )
    answer_in()
    summary = knowledge_uc.forget_member(kb, log, ASKER)
    assert (summary.records, summary.answers) == (1, 1)
    assert "deleted 1 personal record(s)" in summary.sentence()
    assert kb.search("Mochi sneezed", guild_id=GUILD, user_id=ASKER, k=3) == []
