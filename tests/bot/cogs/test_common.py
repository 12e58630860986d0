"""The cogs' pure helpers: splitting, the sources list, the rate limiter, channel rules."""

from __future__ import annotations

from dataclasses import dataclass

from bot.cogs._common import (
    MESSAGE_LIMIT,
    channel_allowed,
    format_answer,
    split_message,
    strip_mentions,
)
from bot.usecases.asking import uses_personal
from bot.usecases.limits import RateLimiter


@dataclass
class Src:
    source: str
    scope: str


def test_split_message_keeps_every_word_under_the_limit() -> None:
    text = " ".join(f"word{n}" for n in range(1500))

    pieces = split_message(text)

    assert len(pieces) > 1 and all(len(p) <= MESSAGE_LIMIT for p in pieces)
    assert " ".join(pieces).split() == text.split()


def test_split_message_prefers_line_breaks_and_cuts_one_huge_word() -> None:
    paragraph = "a" * 1500
    assert split_message(f"{paragraph}\n{paragraph}") == [paragraph, paragraph]
    assert [len(p) for p in split_message("x" * 4500)] == [2000, 2000, 500]
    assert split_message("short") == ["short"]


def test_format_answer_numbers_the_sources_and_adds_the_note() -> None:
    body = format_answer(
        "Twice a day [1].", [Src("guide.md", "community"), Src("your note", "personal")], note="n"
    )

    assert (
        body == "Twice a day [1].\n\n**Sources**\n[1] guide.md (community)\n[2] your note (personal)\n\n_n_"
    )
    assert uses_personal([Src("x", "personal")]) and not uses_personal([Src("x", "community")])
    assert format_answer("", []) == "(no answer)"


def test_rate_limiter_counts_a_sliding_minute_per_member() -> None:
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])

    assert limiter.check("a") == 0 and limiter.check("a") == 0
    assert limiter.check("a") > 0  # third within the minute
    assert limiter.check("b") == 0  # another member is independent
    now[0] = 60.0
    assert limiter.check("a") == 0
    assert RateLimiter(0).check("a") == 0  # 0 means no limit


def test_channel_rules_and_mentions() -> None:
    assert channel_allowed(5, [])
    assert channel_allowed(5, [5]) and not channel_allowed(6, [5])
    assert channel_allowed(7, [5], parent_id=5)  # a thread inside an allowed channel
    assert strip_mentions("<@42> hi <@!42>", 42) == "hi"
