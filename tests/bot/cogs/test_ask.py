"""Asking: mentions, /ask, follow-ups, long answers, concurrency, privacy of personal records."""

from __future__ import annotations

import threading

CAT_POST = "Mochi the cat eats twice a day: a small breakfast at seven and dinner at six."


async def test_mention_answers_with_sources_and_logs_the_answer(world, bot_services, add_post) -> None:
    add_post(CAT_POST)
    bot = world.env.bot

    question = await world.alice.send(world.channel, f"{bot.user.mention} how often does Mochi eat?")

    replies = world.bot_messages()
    assert len(replies) == 1
    reply = replies[0]
    assert reply.reference is not None and reply.reference.message_id == question.id
    assert "**Sources**" in reply.content and "[1] feeding-guide.md (community)" in reply.content
    assert not reply.content.endswith("…")  # the final edit replaced the streaming mark
    record = bot_services["feedback_log"].answer_for_message(str(reply.id))
    assert record is not None
    assert record.question == "how often does Mochi eat?"
    assert record.user_id == str(world.alice.id) and record.guild_id == str(world.guild.id)
    assert CAT_POST in record.context
    assert record.answer and record.answer in reply.content
    # The typing indicator was the bot's first visible reaction.
    routes = [(r.method, r.path) for r in world.env.http_requests]
    typing = routes.index(("POST", f"/channels/{world.channel.id}/typing"))
    first_post = routes.index(("POST", f"/channels/{world.channel.id}/messages"))
    assert typing < first_post


async def test_slash_ask_streams_into_the_response_with_sources(world, bot_services, add_post) -> None:
    add_post(CAT_POST)

    result = await world.alice.slash(world.channel, "ask", question="How often does Mochi eat?")

    assert result.acknowledged and not result.ephemeral
    response = result.response
    assert "[1] feeding-guide.md (community)" in response.content
    record = bot_services["feedback_log"].answer_for_message(str(response.id))
    assert record is not None and record.question == "How often does Mochi eat?"
    assert record.channel_id == str(world.channel.id)


async def test_a_reply_that_mentions_the_bot_is_a_follow_up_with_the_chain_as_history(
    world, bot_services
) -> None:
    mention = world.bot.user.mention
    await world.alice.send(world.channel, f"{mention} what is the best food for a kitten?")
    first = world.bot_messages()[-1]

    await world.alice.send(world.channel, f"{mention} and for an old cat?", reply_to=first)

    follow_up = world.bot_messages()[-1]
    record = bot_services["feedback_log"].answer_for_message(str(follow_up.id))
    assert record.question == "and for an old cat?"
    first_record = bot_services["feedback_log"].answer_for_message(str(first.id))
    # The earlier question and the bot's own earlier answer were in the prompt, in that order.
    assert "what is the best food for a kitten?" in record.prompt
    assert first_record.answer in record.prompt
    assert record.prompt.index("best food for a kitten") < record.prompt.index(first_record.answer)


async def test_a_long_answer_is_split_and_every_part_is_logged(
    world, bot_services, bot_runtime, add_post
) -> None:
    import torch

    add_post(CAT_POST)
    torch.manual_seed(0)  # the tiny model samples: fix what it says
    bot_runtime.default_max_new_tokens = 450  # ~3000 characters of sampled text
    service = bot_services["answer_service"]
    service.max_sentences, service.quote_evidence = 0, False  # the model's own long text, as it is

    await world.alice.send(world.channel, f"{world.bot.user.mention} tell me everything about Mochi")

    parts = world.bot_messages()
    assert len(parts) >= 2
    assert all(0 < len(part.content) <= 2000 for part in parts)
    assert "**Sources**" in parts[-1].content and "**Sources**" not in parts[0].content
    ids = {bot_services["feedback_log"].answer_for_message(str(part.id)).id for part in parts}
    assert len(ids) == 1  # all parts belong to one logged answer
    # While generating, the first part was shown growing, marked as unfinished.
    streamed = [
        r
        for r in world.env.http_requests
        if isinstance(r.json, dict) and str(r.json.get("content", "")).endswith("…")
    ]
    assert streamed


async def test_members_asking_at_once_are_answered_together_and_posted_in_order(world, bot_services) -> None:
    env, mention = world.env, world.bot.user.mention
    askers = [world.alice, world.bob, world.carol, world.dave]
    # Post all four questions before the bot handles any of them, then let it work.
    bot_services["runtime"].peak_batch(reset=True)
    questions = [
        env.backend.create_message(world.channel.id, member.id, f"{mention} question number {n}")
        for n, member in enumerate(askers)
    ]
    await env.settle()
    # The answers were written together (one batch), not one after the other.
    assert bot_services["runtime"].peak_batch() > 1

    answers = world.bot_messages()
    assert len(answers) == len(questions)
    # Per channel, answers come in the order the questions arrived.
    assert [a.reference.message_id for a in answers] == [q.id for q in questions]
    log = bot_services["feedback_log"]
    assert [log.answer_for_message(str(a.id)).user_id for a in answers] == [str(m.id) for m in askers]


async def test_personal_records_reach_only_their_owner(world, bot_services) -> None:
    note = "Mochi sneezed twice a day in March 2024; the vet said it was a mild cold."
    remembered = await world.alice.slash(world.channel, "remember", text=note)
    assert remembered.ephemeral

    mine = await world.alice.slash(world.channel, "ask", question="When did Mochi sneeze?")
    theirs = await world.bob.slash(world.channel, "ask", question="When did Mochi sneeze?")

    # Alice's answer used her record, so only she sees it, and it says so.
    assert mine.ephemeral
    assert "(personal)" in mine.response.content and "Only you can see this answer" in mine.response.content
    # Bob's answer is public and never touched Alice's record.
    assert not theirs.ephemeral
    assert "(personal)" not in theirs.response.content
    log = bot_services["feedback_log"]
    bob_record = log.answer_for_message(str(theirs.response.id))
    assert "sneezed twice" not in bob_record.context and "sneezed twice" not in bob_record.prompt
    # Nothing in the channel, as Bob sees it, mentions the record.
    assert all("sneezed twice" not in m.content for m in world.channel.history(viewer=world.bob))


async def test_a_mention_that_uses_personal_records_is_answered_in_a_dm(world, bot_services) -> None:
    await world.alice.slash(world.channel, "remember", text="Mochi's vet is Dr. Tanaka on Sakura street.")

    await world.alice.send(world.channel, f"{world.bot.user.mention} who is Mochi's vet?")

    public = world.bot_messages()[-1]
    assert "direct message" in public.content and "Tanaka" not in public.content
    dm = [m for m in world.alice.user.dm_channel.history() if m.author.id == world.bot.user.id]
    assert dm and "(personal)" in dm[-1].content
    assert bot_services["feedback_log"].answer_for_message(str(dm[-1].id)) is not None


async def test_rate_limit_refuses_with_the_reason_then_recovers(world, bot_settings) -> None:
    limit = bot_settings.discord.rate_limit_per_minute
    for n in range(limit):
        result = await world.bob.slash(world.channel, "ask", question=f"question {n}")
        assert not result.ephemeral

    refused = await world.bob.slash(world.channel, "ask", question="one too many")
    assert refused.ephemeral and "questions a minute" in refused.response.content
    # Another member is not affected.
    assert not (await world.alice.slash(world.channel, "ask", question="my first")).ephemeral

    await world.env.advance_time(61)
    assert not (await world.bob.slash(world.channel, "ask", question="later")).ephemeral


async def test_questions_outside_the_allowed_channels_are_refused(world) -> None:
    other = world.guild.create_text_channel("bots")
    world.bot.services.settings.discord.allowed_channels = [other.id]

    await world.alice.send(world.channel, f"{world.bot.user.mention} hello?")
    result = await world.alice.slash(world.channel, "ask", question="hello?")

    assert f"<#{other.id}>" in world.bot_messages()[-1].content
    assert result.ephemeral and f"<#{other.id}>" in result.response.content
    assert (await world.alice.slash(other, "ask", question="hello?")).response is not None


async def test_a_direct_message_is_a_question_without_a_mention(world, bot_services) -> None:
    question = await world.alice.user.send_dm("how often should a kitten eat?")

    dm = world.alice.user.dm_channel
    answers = [m for m in dm.history() if m.author.id == world.bot.user.id]
    assert len(answers) == 1 and answers[0].reference.message_id == question.id
    record = bot_services["feedback_log"].answer_for_message(str(answers[0].id))
    # A DM belongs to no server: no community posts and no personal records are searched.
    assert record.question == "how often should a kitten eat?" and record.context == ""
    assert "personal records" not in answers[0].content


async def test_a_member_is_told_when_the_bot_is_too_busy_and_nothing_is_lost(world, bot_services) -> None:
    runtime = bot_services["runtime"]
    runtime.set_limits(max_batch=1, max_waiting=0)
    started, release = threading.Event(), threading.Event()

    def hold(_piece: str) -> None:  # another member's answer occupies the only row
        started.set()
        release.wait(30)

    try:
        occupying = runtime.submit([{"role": "user", "content": "a long answer"}], on_token=hold)
        assert started.wait(30)
        await world.alice.send(world.channel, f"{world.bot.user.mention} why do cats purr?")
        reply = world.bot_messages()[-1]
        assert "I am busy writing 1 answer(s), with 0 question(s) waiting before yours" in reply.content
        assert "Ask again in a minute" in reply.content
    finally:
        release.set()
        runtime.set_limits(max_batch=8, max_waiting=32)
    assert occupying.result(timeout=30).completion_tokens > 0  # the running answer was not dropped
    await world.alice.send(world.channel, f"{world.bot.user.mention} why do cats purr?")
    assert "I am busy" not in world.bot_messages()[-1].content
