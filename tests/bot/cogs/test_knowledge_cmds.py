"""Knowledge commands: /remember, /add (good, binary, oversized, community needs a curator), /forget."""

from __future__ import annotations

from typing import Any

GOOD_DOC = b"# Grooming\n\nBrush a long-haired cat every day and a short-haired cat once a week.\n"


def personal_texts(bot_services: dict[str, Any], world: Any, member: Any, query: str) -> list[str]:
    hits = bot_services["knowledge_base"].search(
        query, guild_id=str(world.guild.id), user_id=str(member.id), k=5
    )
    return [hit.chunk.text for hit in hits if hit.chunk.scope == "personal"]


async def test_remember_stores_a_personal_record_for_that_member_only(world, bot_services) -> None:
    result = await world.alice.slash(world.channel, "remember", text="Mochi is allergic to chicken.")

    assert result.ephemeral and "Remembered" in result.response.content
    assert personal_texts(bot_services, world, world.alice, "chicken allergy") == [
        "Mochi is allergic to chicken."
    ]
    assert personal_texts(bot_services, world, world.bob, "chicken allergy") == []


async def test_add_a_personal_document(world, bot_services) -> None:
    result = await world.alice.slash(world.channel, "add", file=("grooming.md", GOOD_DOC), scope="personal")

    assert result.ephemeral and "Added `grooming.md` to your personal records" in result.response.content
    assert any(
        "Brush a long-haired cat" in t for t in personal_texts(bot_services, world, world.alice, "brushing")
    )
    assert personal_texts(bot_services, world, world.bob, "brushing") == []


async def test_community_documents_need_the_curator_role(world, bot_services) -> None:
    refused = await world.bob.slash(world.channel, "add", file=("grooming.md", GOOD_DOC), scope="community")
    assert refused.ephemeral and "loopbot-curator" in refused.response.content

    added = await world.carol.slash(world.channel, "add", file=("grooming.md", GOOD_DOC), scope="community")
    assert not added.ephemeral and "the community knowledge" in added.response.content
    hits = bot_services["knowledge_base"].search("brushing", guild_id=str(world.guild.id), user_id=None, k=5)
    assert any(hit.chunk.source == "grooming.md" and hit.chunk.scope == "community" for hit in hits)


async def test_a_binary_upload_is_refused_with_the_reason(world, bot_services) -> None:
    result = await world.alice.slash(world.channel, "add", file=("photo.txt", b"\x89PNG\r\n\x00\x00\x00IHDR"))

    assert result.ephemeral and "binary" in result.response.content
    assert personal_texts(bot_services, world, world.alice, "photo") == []


async def test_an_oversized_upload_is_refused_before_reading_it(world, bot_settings) -> None:
    big = b"cats " * int(bot_settings.kb.max_file_mb * 1_000_000)  # five times the limit

    result = await world.alice.slash(world.channel, "add", file=("big.txt", big))

    assert result.ephemeral and "the limit is" in result.response.content


async def test_forget_asks_then_deletes_records_and_pairs(world, bot_services) -> None:
    log = bot_services["feedback_log"]
    asked = await world.alice.slash(world.channel, "ask", question="How often do cats sleep?")
    await world.bob.react(asked.response.message, "👍")  # a 👍 turns her question into a training pair
    await world.alice.slash(world.channel, "remember", text="Mochi is allergic to chicken.")
    assert any(pair.user_id == str(world.alice.id) for pair in log.pairs())

    prompt = await world.alice.slash(world.channel, "forget")
    assert prompt.ephemeral and "Continue?" in prompt.response.content
    assert personal_texts(bot_services, world, world.alice, "chicken")  # nothing deleted yet
    done = await world.alice.click(prompt.response.message, label="Forget everything")

    assert "deleted 1 personal record(s)" in done.response.content
    assert personal_texts(bot_services, world, world.alice, "chicken") == []
    assert not any(pair.user_id == str(world.alice.id) for pair in log.pairs())


async def test_forget_can_be_cancelled(world, bot_services) -> None:
    await world.alice.slash(world.channel, "remember", text="Mochi is allergic to chicken.")

    prompt = await world.alice.slash(world.channel, "forget")
    cancelled = await world.alice.click(prompt.response.message, label="Cancel")

    assert "Nothing was deleted" in cancelled.response.content
    assert personal_texts(bot_services, world, world.alice, "chicken")
