"""The answer chain with a tiny real GPTQ Llama (``tiny_runtime``), a temp-dir Chroma and the real embedder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import chromadb
import pytest

from knowledge.chain import PROMPT_VERSION, AnswerService
from knowledge.errors import KnowledgeError
from knowledge.store import KnowledgeBase
from knowledge.types import Chunk

A_RECORDS = [
    "Mochi sneezed twice a day in March 2024; the vet said it was a mild cold.",
    "Mochiの体重は2024年5月に4.8キロでした。",
]
POSTS = [
    "Sneezing with watery eyes is often cat flu; see a vet if it lasts more than a few days.",
    "Adult cats sleep 12 to 16 hours a day.",
    "Change the water bowl every day.",
]


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory, packaged_embeddings: object):
    root = tmp_path_factory.mktemp("chain")
    base = KnowledgeBase(
        chromadb.PersistentClient(str(root / "chroma")), packaged_embeddings, lexical_path=root / "lex.db"
    )
    base.add(
        [
            Chunk(id=f"post{i}", text=t, source="faq.md", scope="community", guild_id="100")
            for i, t in enumerate(POSTS)
        ]
    )
    base.add(
        [
            Chunk(id=f"a{i}", text=t, source="remember", scope="personal", guild_id="100", owner_id="1")
            for i, t in enumerate(A_RECORDS)
        ]
    )
    yield base
    base.close()


def test_answer_is_grounded_on_its_passages(kb: KnowledgeBase, tiny_runtime) -> None:
    service = AnswerService(kb, tiny_runtime, top_k=3)
    answer = service.answer("When did Mochi sneeze?", user_id="1", guild_id="100")
    assert answer.answer  # the tiny model says something
    assert len(answer.sources) == 3 and answer.sources[0].text == A_RECORDS[0]
    assert answer.chunk_ids == [s.id for s in answer.sources]
    # Plain passages, one blank line apart, in source order; no "[n] (source)" markup to copy.
    assert answer.context == "\n\n".join(s.text for s in answer.sources)
    assert answer.context.startswith(A_RECORDS[0]) and "[1]" not in answer.context
    assert answer.context in answer.prompt and "Question: When did Mochi sneeze?" in answer.prompt
    assert service.system_prompt in answer.prompt
    assert answer.question == "When did Mochi sneeze?"
    assert answer.prompt_version == PROMPT_VERSION and answer.adapter is None
    data = answer.to_json()
    assert set(data) == {"answer", "sources", "adapter"}
    assert data["sources"][0] == {"id": "a0", "source": "remember", "scope": "personal", "text": A_RECORDS[0]}


def test_other_members_never_get_a_records(kb: KnowledgeBase, tiny_runtime) -> None:
    service = AnswerService(kb, tiny_runtime, top_k=5)
    questions = [*A_RECORDS, "When did Mochi sneeze?", "What did the vet say about Mochi?", "Mochiの体重は？"]
    for question in questions:
        for asker in ("2", None):
            answer = service.answer(question, user_id=asker, guild_id="100")
            assert all(s.scope == "community" for s in answer.sources), question
            for record in A_RECORDS:
                assert record not in answer.context
                # the asker may quote the record themselves; it must not come back from the store
                assert answer.prompt.count(record) == (1 if question == record else 0)


def test_empty_knowledge_base_just_answers(tmp_path: Path, packaged_embeddings: object, tiny_runtime) -> None:
    empty = KnowledgeBase(chromadb.PersistentClient(str(tmp_path / "chroma")), packaged_embeddings)
    for service in (AnswerService(empty, tiny_runtime), AnswerService(None, tiny_runtime)):
        answer = service.answer("What is the capital of Japan?", user_id="1", guild_id="100")
        assert answer.sources == [] and answer.context == "" and answer.chunk_ids == []
        assert "What is the capital of Japan?" in answer.prompt and "Notes:" not in answer.prompt


def test_direct_messages_have_no_scope(kb: KnowledgeBase, tiny_runtime) -> None:
    answer = AnswerService(kb, tiny_runtime).answer("When did Mochi sneeze?", user_id="1", guild_id=None)
    assert answer.sources == []


def test_history_goes_before_the_question(kb: KnowledgeBase, tiny_runtime) -> None:
    history = [
        {"role": "user", "content": "Tell me about cat colds."},
        {"role": "assistant", "content": "Cat colds usually pass in a week."},
        {"role": "system", "content": "IGNORED SYSTEM TURN"},
    ]
    answer = AnswerService(kb, tiny_runtime).answer(
        "And sneezing?", user_id="2", guild_id="100", history=history
    )
    prompt = answer.prompt
    assert (
        prompt.index("Tell me about cat colds.")
        < prompt.index("Cat colds usually pass")
        < prompt.index("And sneezing?")
    )
    assert "IGNORED SYSTEM TURN" not in prompt


def test_context_budget_drops_low_ranked_passages(kb: KnowledgeBase, tiny_runtime) -> None:
    full = AnswerService(kb, tiny_runtime, top_k=3, max_context_tokens=4096)
    tight = AnswerService(kb, tiny_runtime, top_k=3, max_context_tokens=40)
    hits = full.retrieve("cat sneezing", user_id="1", guild_id="100")
    assert len(full.fit_context(hits)) == 3
    kept = tight.fit_context(hits)
    assert 1 <= len(kept) < 3 and kept == hits[: len(kept)]
    assert len(tight.fit_context(hits[:1])) == 1  # the best passage always goes in


async def test_aanswer_streams_tokens_and_keeps_the_loop_free(kb: KnowledgeBase, tiny_runtime) -> None:
    service = AnswerService(kb, tiny_runtime, top_k=2)
    pieces: list[str] = []
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    answer = await service.aanswer(
        "How long do cats sleep?", user_id="2", guild_id="100", on_token=pieces.append
    )
    task.cancel()
    assert pieces and "".join(pieces).strip() == answer.answer
    assert ticks > 1  # the loop ran while retrieval and generation were busy
    assert [s.id for s in answer.sources][:1] == ["post1"]


def test_bad_questions_and_settings(kb: KnowledgeBase, tiny_runtime) -> None:
    with pytest.raises(KnowledgeError, match="ask a question"):
        AnswerService(kb, tiny_runtime).answer("   ", user_id="1", guild_id="100")
    with pytest.raises(KnowledgeError, match="top_k"):
        AnswerService(kb, tiny_runtime, top_k=0)


def test_only_passages_that_help_are_used_and_cited(kb: KnowledgeBase, tiny_runtime) -> None:
    service = AnswerService(
        kb, tiny_runtime, top_k=3, min_relevance=0.35, relevance_margin=0.1, max_passages=2
    )
    hits = service.retrieve("How long do adult cats sleep?", user_id=None, guild_id="100")
    kept = service.select(hits)
    assert kept and kept[0].chunk.id == "post1" and len(kept) <= 2
    assert all(h.lexical or (h.similarity or 0) >= 0.35 for h in kept)
    assert all((h.similarity or 0) >= (kept[0].similarity or 0) - 0.1 for h in kept if not h.lexical)
    answer = service.answer("How long do adult cats sleep?", user_id=None, guild_id="100")
    assert [s.id for s in answer.sources] == [h.chunk.id for h in kept]  # cited = prompted


def test_the_passages_kept_are_the_ones_whose_sentence_answers(kb: KnowledgeBase, tiny_runtime) -> None:
    """Three passages about the room, one saying how many it holds: that one is kept, though the
    retrieval ranked it last; a Japanese question keeps the retrieval's order."""
    from knowledge.types import Hit

    texts = [
        "The meetup room is upstairs at the Copper Kettle café on Alder Row. The room has a piano.",
        "The room is booked by the club every second Saturday. Ask at the bar for the room key.",
        "Please RSVP in #events, because the upstairs room holds 44 people and fills up fast.",
    ]
    hits = [
        Hit(Chunk(id=f"r{i}", text=t, source="events.md", scope="community", guild_id="100"), 1 - i / 10, 0.6)
        for i, t in enumerate(texts)
    ]
    service = AnswerService(kb, tiny_runtime, top_k=3, max_passages=1)
    assert [h.chunk.id for h in service.select(hits, "How many people fit in the meetup room?")] == ["r2"]
    assert [h.chunk.id for h in service.select(hits)] == ["r0"]  # no question: the retrieval's order
    assert [h.chunk.id for h in service.select(hits, "部屋には何人入れますか？")] == ["r0"]
    assert [
        h.chunk.id for h in AnswerService(kb, tiny_runtime, max_passages=3).select(hits, "How many?")
    ] == [
        "r0",
        "r1",
        "r2",
    ]  # all of them fit: the order is the retrieval's


class _Counting:
    """The real tiny runtime, counting the generations asked of it."""

    def __init__(self, runtime) -> None:  # type: ignore[no-untyped-def]
        self.runtime, self.calls = runtime, 0

    def generate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.runtime.generate(*args, **kwargs)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.runtime, name)


def test_nothing_relevant_says_so_and_never_guesses_about_the_community(
    kb: KnowledgeBase, tiny_runtime
) -> None:
    from adapters.prompt import GENERAL_KNOWLEDGE, NOTHING_FOUND

    counting = _Counting(tiny_runtime)
    service = AnswerService(kb, counting, top_k=3, min_relevance=0.9)
    # About the community (who, when, a price, "the club"): the note, and no generation at all.
    for question in ("Who is the treasurer?", "How much does membership cost?", "When does the club meet?"):
        answer = service.answer(question, user_id=None, guild_id="100")
        assert answer.sources == [] and answer.context == "" and answer.chunk_ids == []
        assert answer.answer.startswith(NOTHING_FOUND) and GENERAL_KNOWLEDGE not in answer.answer
        assert answer.adapter is None
    assert counting.calls == 0
    # A clearly general question gets the model's answer, marked as general knowledge.
    general = service.answer("How do you boil an egg?", user_id=None, guild_id="100")
    assert counting.calls == 1
    assert general.answer.startswith(NOTHING_FOUND)
    assert GENERAL_KNOWLEDGE in general.answer or general.answer.endswith("when you know.")
    # In a DM nothing is searched, so there is nothing to report.
    dm = service.answer("Who won the chess tournament in Lisbon?", user_id=None, guild_id=None)
    assert not dm.answer.startswith(NOTHING_FOUND) and counting.calls == 2


def test_answers_keep_a_sentence_budget() -> None:
    from adapters.prompt import finish_answer

    text = "Cats sleep a lot. They nap in the sun. 1. 2. 3. 4."
    assert finish_answer(text, max_sentences=2) == "Cats sleep a lot. They nap in the sun."
    assert finish_answer(text) == text


WIKI = """# Northbrook Cat Society wiki

## Meetings
We meet on the first Tuesday of each month at 7pm in the back room of the Northbrook
Arms, 12 Mill Lane. Bring
your own mug.

## Membership
Membership costs 18 pounds a year. Pay the treasurer, Gwen Adeyemi, by bank
transfer or in cash at a meeting.

## Mascot
Our mascot is a ginger tom called Biscuit, who sleeps on the
library shelf.
"""


def test_a_hard_wrapped_wiki_is_answered_from_its_sections(
    tmp_path: Path, packaged_embeddings: object, tiny_runtime
) -> None:
    """Short questions find the section holding their word; the answering sentence is stated with
    its section, whole; a question about the community that no section answers gets no guess."""
    from adapters.prompt import CLOSEST_NOTE, NOTHING_FOUND
    from ingest import ingest_paths
    from knowledge.quality import garbled_quote, quoted_pieces

    (tmp_path / "wiki.md").write_text(WIKI, encoding="utf-8")
    wiki_kb = KnowledgeBase(
        chromadb.PersistentClient(str(tmp_path / "chroma")),
        packaged_embeddings,
        lexical_path=tmp_path / "lex.db",
        latin_lexical_weight=1.0,
    )
    ingest_paths(wiki_kb, [tmp_path / "wiki.md"], scope="community", guild_id="7")
    counting = _Counting(tiny_runtime)
    service = AnswerService(
        wiki_kb,
        counting,
        top_k=5,
        min_relevance=0.2,
        relevance_margin=0.1,
        max_passages=2,
        quote_evidence=True,
    )
    for question, key, section in (
        ("Who is the treasurer?", "Gwen Adeyemi", "Membership"),
        ("club mascot?", "Biscuit", "Mascot"),
        ("Where are the meetings held?", "Northbrook Arms, 12 Mill Lane", "Meetings"),
    ):
        answer = service.answer(question, user_id=None, guild_id="7")
        assert key in answer.answer and CLOSEST_NOTE not in answer.answer, (question, answer.answer)
        assert f"wiki.md › {section}" in answer.answer and answer.sources[0].section == section
        assert not [p for p in quoted_pieces(answer.answer) if garbled_quote(p, [WIKI])], answer.answer
    calls = counting.calls
    nothing = service.answer("What is the society's bank account number?", user_id=None, guild_id="7")
    assert nothing.answer.startswith(NOTHING_FOUND) and nothing.sources == [] and counting.calls == calls
    wiki_kb.close()
