"""Feedback: votes on answers, corrections by reply (asker, stranger + votes, curator) and by the menu."""

from __future__ import annotations

from typing import Any

UP, DOWN = "👍", "👎"


async def ask(world: Any, member: Any, question: str = "How often should a cat eat?") -> Any:
    """``member`` asks by mention; returns the bot's answer message."""
    await member.send(world.channel, f"{world.bot.user.mention} {question}")
    return world.bot_messages()[-1]


def reactors(message: Any, emoji: str, world: Any) -> set[int]:
    """Who reacted ``emoji`` on ``message`` (read back from simcord's world state)."""
    reaction = world.env.backend.get_message(message.channel.id, message.id).reaction_for(emoji)
    return set(reaction.user_ids) if reaction else set()


def community_sources(bot_services: dict[str, Any], world: Any, query: str) -> list[str]:
    hits = bot_services["knowledge_base"].search(query, guild_id=str(world.guild.id), user_id=None, k=5)
    return [hit.chunk.text for hit in hits]


async def test_votes_are_added_removed_and_idempotent(world, bot_services) -> None:
    log = bot_services["feedback_log"]
    answer = await ask(world, world.alice)
    record_id = log.answer_for_message(str(answer.id)).id

    await world.bob.react(answer, UP)
    await world.carol.react(answer, DOWN)
    assert (log.get_answer(record_id).upvotes, log.get_answer(record_id).downvotes) == (1, 1)

    await world.bob.unreact(answer, UP)
    assert log.get_answer(record_id).upvotes == 0
    await world.bob.react(answer, UP)
    await world.bob.react(answer, UP)  # a repeated 👍 still counts once
    assert log.get_answer(record_id).upvotes == 1


async def test_reactions_elsewhere_are_ignored(world, bot_services) -> None:
    log = bot_services["feedback_log"]
    plain = await world.alice.send(world.channel, "just chatting")
    answer = await ask(world, world.alice)

    await world.bob.react(plain, UP)
    await world.bob.react(answer, "🐱")

    stats = log.stats(str(world.guild.id))
    assert (stats.answers, stats.upvotes, stats.downvotes) == (1, 0, 0)


async def correct_with_pencil(world: Any, member: Any, answer: Any, text: str) -> Any:
    """``member`` presses ✏️ under ``answer`` and submits ``text``; returns the form's reply."""
    record = world.bot_services["feedback_log"].answer_for_message(str(answer.id))
    shown = await member.click(answer, custom_id=f"loopbot:correct:{record.id}")
    assert shown.modal is not None
    return await member.submit_modal(shown, {"correction": text})


async def test_a_correction_by_the_asker_is_accepted_and_retrievable_at_once(world, bot_services) -> None:
    log = bot_services["feedback_log"]
    world.bot_services = bot_services
    answer = await ask(world, world.alice)
    fix = "Adult cats eat two measured meals a day, kittens three or four."

    submitted = await correct_with_pencil(world, world.alice, answer, fix)

    posted = world.bot_messages()[-1]
    assert fix in posted.content and posted.reference.message_id == answer.id
    assert submitted.ephemeral and "accepted" in submitted.response.content
    correction = log.correction_for_message(str(posted.id))
    assert correction is not None and correction.accepted and correction.trusted
    assert world.bot.user.id in reactors(posted, "📝", world) and world.bot.user.id in reactors(
        posted, "✅", world
    )
    assert any(
        fix in text for text in community_sources(bot_services, world, "how many meals do kittens eat")
    )
    # The next member's question retrieves it as a community post.
    await world.bob.send(world.channel, f"{world.bot.user.mention} how many meals do kittens eat?")
    assert f"correction #{correction.id} (community)" in world.bot_messages()[-1].content


async def test_a_strangers_correction_needs_votes(world, bot_services) -> None:
    log = bot_services["feedback_log"]
    erin = world.guild.add_member(world.env.create_user("erin"))
    answer = await ask(world, world.alice)
    fix = "Cats should eat from a puzzle feeder twice daily."

    shown = await world.bob.context_menu(world.channel, "Correct answer", answer)
    await world.bob.submit_modal(shown, {"correction": fix})
    reply = world.bot_messages()[-1]

    assert not log.correction_for_message(str(reply.id)).accepted
    assert world.bot.user.id in reactors(reply, "📝", world)
    assert not any(fix in text for text in community_sources(bot_services, world, "puzzle feeder"))
    await world.bob.react(reply, UP)  # the author's own vote does not count
    await erin.react(reply, UP)
    assert not log.correction_for_message(str(reply.id)).accepted
    await world.dave.react(reply, DOWN)  # 👎 is not a vote for a correction
    frank = world.guild.add_member(world.env.create_user("frank"))
    await frank.react(reply, UP)

    correction = log.correction_for_message(str(reply.id))
    assert correction.accepted and correction.votes == 2
    assert world.bot.user.id in reactors(reply, "✅", world)
    assert any(fix in text for text in community_sources(bot_services, world, "puzzle feeder"))


async def test_a_curators_correction_is_accepted_at_once(world, bot_services) -> None:
    world.bot_services = bot_services
    answer = await ask(world, world.alice)

    await correct_with_pencil(world, world.carol, answer, "Feed adult cats twice a day.")

    correction = bot_services["feedback_log"].correction_for_message(str(world.bot_messages()[-1].id))
    assert correction.accepted and correction.trusted


async def test_a_thanks_reply_is_answered_as_conversation_never_taken_for_a_correction(
    world, bot_services
) -> None:
    log = bot_services["feedback_log"]
    answer = await ask(world, world.alice)
    first = log.answer_for_message(str(answer.id))

    await world.alice.send(world.channel, "thanks!", reply_to=answer)
    await world.alice.send(world.channel, "and what about grapes?", reply_to=world.bot_messages()[-1])

    assert log.corrections(first.id) == []
    assert log.stats(str(world.guild.id)).corrections == 0 and log.pairs() == []
    assert community_sources(bot_services, world, "thanks grapes") == []
    follow_up = log.answer_for_message(str(world.bot_messages()[-1].id))
    # The reply chain is the conversation: both earlier turns are in the follow-up's prompt.
    assert follow_up.question == "and what about grapes?"
    assert "thanks!" in follow_up.prompt and first.question in follow_up.prompt


async def test_a_reply_to_another_member_is_ignored(world, bot_services) -> None:
    said = await world.alice.send(world.channel, "my cat loves tuna")
    before = len(world.bot_messages())

    await world.bob.send(world.channel, "mine too", reply_to=said)

    assert len(world.bot_messages()) == before
    assert bot_services["feedback_log"].stats().answers == 0


async def test_the_correct_answer_menu_opens_a_form_that_records_a_correction(world, bot_services) -> None:
    log = bot_services["feedback_log"]
    answer = await ask(world, world.alice)

    shown = await world.bob.context_menu(world.channel, "Correct answer", answer)
    assert shown.modal is not None
    submitted = await world.bob.submit_modal(shown, {"correction": "Two small meals a day."})

    assert submitted.ephemeral and "recorded" in submitted.response.content
    posted = world.bot_messages()[-1]
    assert "Two small meals a day." in posted.content and posted.reference.message_id == answer.id
    correction = log.correction_for_message(str(posted.id))
    assert correction.author_id == str(world.bob.id) and not correction.accepted
    assert log.corrections(log.answer_for_message(str(answer.id)).id) == [correction]


async def test_the_menu_on_a_message_that_is_not_an_answer_explains(world) -> None:
    plain = await world.alice.send(world.channel, "hello")

    shown = await world.bob.context_menu(world.channel, "Correct answer", plain)

    assert shown.modal is None and shown.ephemeral and "not one of my answers" in shown.response.content


async def test_a_correction_of_a_private_answer_stays_personal(world, bot_services) -> None:
    log, kb = bot_services["feedback_log"], bot_services["knowledge_base"]
    world.bot_services = bot_services
    await world.alice.slash(world.channel, "remember", text="Mochi's vet is Dr. Tanaka on Sakura street.")
    await world.alice.send(world.channel, f"{world.bot.user.mention} who is Mochi's vet?")
    dm = world.alice.user.dm_channel
    answer = [m for m in dm.history() if m.author.id == world.bot.user.id][-1]

    submitted = await correct_with_pencil(
        world, world.alice.user, answer, "Dr. Tanaka moved to Hinoki street."
    )

    assert "your own records" in submitted.response.content
    record = log.answer_for_message(str(answer.id))
    (correction,) = log.corrections(record.id)
    assert correction.accepted and correction.private and correction.message_id is None
    guild = str(world.guild.id)
    assert not any(
        "Hinoki" in h.chunk.text for h in kb.search("vet street", guild_id=guild, user_id=None, k=5)
    )
    mine = kb.search("vet street", guild_id=guild, user_id=str(world.alice.id), k=5)
    assert any("Hinoki" in h.chunk.text and h.chunk.scope == "personal" for h in mine)
    # Nothing of it is shared training data; it is Alice's own pair.
    assert log.pairs() == [] and [p.output for p in log.pairs(owner_id=str(world.alice.id))] == [
        "Dr. Tanaka moved to Hinoki street."
    ]
    # A plain reply in the DM is a follow-up question, not a correction.
    reference = world.env.backend.normalize_message_reference(
        dm.id, {"channel_id": str(dm.id), "message_id": str(answer.id)}
    )
    await world.alice.user.send_dm("thanks!", reference=reference)
    assert len(log.corrections(record.id)) == 1


async def test_private_answers_take_votes_through_buttons(world, bot_services) -> None:
    log = bot_services["feedback_log"]
    await world.alice.slash(world.channel, "remember", text="Mochi is allergic to chicken.")
    answer = await world.alice.slash(world.channel, "ask", question="Is Mochi allergic to chicken?")
    assert answer.ephemeral
    record_id = log.answer_for_message(str(answer.response.id)).id

    voted = await world.alice.click(answer.response.message, custom_id=f"loopbot:vote:{record_id}:1")
    assert voted.ephemeral and "recorded" in voted.response.content
    assert log.get_answer(record_id).upvotes == 1

    again = await world.alice.click(answer.response.message, custom_id=f"loopbot:vote:{record_id}:1")
    assert "taken back" in again.response.content and log.get_answer(record_id).upvotes == 0
    await world.alice.click(answer.response.message, custom_id=f"loopbot:vote:{record_id}:-1")
    assert log.get_answer(record_id).downvotes == 1
    assert log.pairs() == []  # a vote on a private answer never makes a shared pair
    assert [p.kind for p in log.pairs(kinds=("negative",), owner_id=str(world.alice.id))] == ["negative"]
