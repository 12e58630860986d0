"""The use-case layer (bot/usecases) on real parts: temp-dir Chroma, temp SQLite, the tiny model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import chromadb
import pytest

from adapters.registry import AdapterRegistry
from bot.usecases import feedback as feedback_uc
from bot.usecases import knowledge as knowledge_uc
from bot.usecases.training import serve_active
from feedback.log import FeedbackLog
from knowledge.store import KnowledgeBase

GUILD, ASKER, STRANGER = "1001", "2001", "2002"


@pytest.fixture
def kb(tmp_path: Path, packaged_embeddings: Any) -> Any:
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    store = KnowledgeBase(client, packaged_embeddings, lexical_path=tmp_path / "lexical.db")
    yield store
    store.close()


@pytest.fixture
def log(tmp_path: Path) -> Any:
    feedback_log = FeedbackLog(tmp_path / "loopbot.db")
    yield feedback_log
    feedback_log.close()


def _answer(log: FeedbackLog, guild: str = GUILD) -> Any:
    answer_id = log.record_answer(
        guild_id=guild,
        channel_id="3001",
        user_id=ASKER,
        question="How often should a kitten eat?",
        context="",
        chunk_ids=(),
        prompt="p",
        prompt_version="rag-v1",
        adapter=None,
        answer="Once a week.",
    )
    return log.get_answer(answer_id)


def test_a_trusted_correction_is_published_through_ingest(kb, log) -> None:
    answer = _answer(log)
    outcome = feedback_uc.correct(
        log,
        kb,
        answer,
        author_id=ASKER,
        text="Kittens eat four small meals a day.",
        message_id="9001",
        trusted=feedback_uc.trusted_author(answer, ASKER, holds_curator_role=False),
        votes_needed=3,
        private=False,
    )
    assert outcome.newly_accepted and outcome.correction.accepted
    hits = kb.search("how many meals do kittens eat", guild_id=GUILD, user_id=None, k=3)
    top = hits[0].chunk
    assert top.source == f"correction #{outcome.correction.id}" and top.scope == "community"
    assert "four small meals" in top.text and top.author == ASKER


def test_a_strangers_correction_waits_for_votes_and_the_authors_vote_does_not_count(kb, log) -> None:
    answer = _answer(log)
    outcome = feedback_uc.correct(
        log, kb, answer, author_id=STRANGER, text="Three meals.", message_id="9002",
        trusted=False, votes_needed=1, private=False,
    )  # fmt: skip
    assert not outcome.correction.accepted
    assert kb.search("meals", guild_id=GUILD, user_id=None, k=3) == []
    own = feedback_uc.vote_on_correction(
        log, kb, outcome.correction, answer, voter_id=STRANGER, present=True, trusted=False,
        votes_needed=1, private=False,
    )  # fmt: skip
    assert own is None
    voted = feedback_uc.vote_on_correction(
        log, kb, outcome.correction, answer, voter_id=ASKER, present=True, trusted=False,
        votes_needed=1, private=False,
    )  # fmt: skip
    assert voted is not None and voted.newly_accepted
    assert [h.chunk.source for h in kb.search("meals", guild_id=GUILD, user_id=None, k=3)] == [
        f"correction #{outcome.correction.id}"
    ]


def test_a_private_correction_becomes_the_askers_own_record(kb, log) -> None:
    answer = _answer(log)
    feedback_uc.correct(
        log, kb, answer, author_id=ASKER, text="Mochi eats at 7 am.", message_id=None,
        trusted=True, votes_needed=3, private=True,
    )  # fmt: skip
    assert kb.search("when does Mochi eat", guild_id=GUILD, user_id=None, k=3) == []
    mine = kb.search("when does Mochi eat", guild_id=GUILD, user_id=ASKER, k=3)
    assert mine and mine[0].chunk.scope == "personal" and mine[0].chunk.owner_id == ASKER


def test_a_correction_of_a_dm_answer_is_recorded_without_a_post(kb, log) -> None:
    answer = _answer(log, guild="")
    outcome = feedback_uc.correct(
        log, kb, answer, author_id=ASKER, text="Four meals.", message_id=None,
        trusted=True, votes_needed=3, private=True,
    )  # fmt: skip
    assert (
        outcome.correction.accepted
        and feedback_uc.correction_chunks(outcome.correction, answer, private=True) == []
    )
    assert kb.stats()["community_chunks"] == 0 and kb.stats()["personal_records"] == 0


def test_toggle_vote_records_then_takes_back(log) -> None:
    answer = _answer(log)
    assert feedback_uc.toggle_vote(log, answer.id, STRANGER, 1) is True
    assert log.get_answer(answer.id).upvotes == 1
    assert feedback_uc.toggle_vote(log, answer.id, STRANGER, 1) is False
    assert log.get_answer(answer.id).upvotes == 0


def test_remember_and_forget_member(kb, log) -> None:
    assert (
        knowledge_uc.remember(
            kb, "Mochi sneezed twice in March.", guild_id=GUILD, owner_id=ASKER, created="2026-03-01T10:00:00"
        )
        == 1
    )
    _answer(log)
    summary = knowledge_uc.forget_member(kb, log, ASKER)
    assert (summary.records, summary.answers) == (1, 1)
    assert "deleted 1 personal record(s)" in summary.sentence()
    assert kb.search("Mochi sneezed", guild_id=GUILD, user_id=ASKER, k=3) == []


def test_an_unreadable_active_adapter_serves_the_base_model_with_a_warning(
    tiny_runtime, tmp_path, make_lora_adapter, tiny_model_dir, caplog
) -> None:
    registry = AdapterRegistry(tmp_path / "adapters")
    with registry.stage() as stage:
        source = make_lora_adapter(tiny_model_dir)
        for item in source.iterdir():
            (stage.path / item.name).write_bytes(item.read_bytes())
        version = registry.publish(stage, {"base_model": str(tiny_model_dir)})
    registry.promote(version.version)
    (version.path / "adapter_model.safetensors").write_bytes(b"not a tensor file")
    with caplog.at_level(logging.WARNING):
        assert serve_active(tiny_runtime, registry) is None
    assert tiny_runtime.active_adapter is None and "serving the bare base model" in caplog.text
    assert tiny_runtime.generate([{"role": "user", "content": "hi"}], max_new_tokens=2).text is not None


def test_registry_cache_round_trip_and_bad_keys(tmp_path) -> None:
    from adapters.errors import AdapterError

    registry = AdapterRegistry(tmp_path / "adapters")
    assert registry.read_cache("anchors-x") is None
    registry.write_cache("anchors-x", [{"a": 1}])
    assert registry.read_cache("anchors-x") == [{"a": 1}]
    with pytest.raises(AdapterError, match="Invalid cache key"):
        registry.write_cache("../escape", [])


def test_the_gate_sets_train_every_correction_and_rotate_the_held_out_answers(log) -> None:
    from datetime import UTC, datetime

    from adapters.registry import AdapterVersion
    from bot.usecases.training import split_for_gate
    from feedback.records import Pair

    def pair(i: int, kind: str) -> Pair:
        return Pair(i, kind, f"question {i}?", "", f"answer {i}", ASKER, None, datetime.now(UTC))  # type: ignore[arg-type]

    pairs = [pair(i, "corrected" if i % 2 else "taught") for i in range(1, 11)]
    pairs += [pair(i, "positive") for i in range(11, 21)]
    train, sets = split_for_gate(pairs, None, 0.2)
    assert {p.kind for p in sets["heldout"]} == {"positive"} and sets["heldout"]  # 👍 answers check style
    assert {p.id for p in pairs if p.kind != "positive"} <= {p.id for p in train}  # never withheld
    assert sets["taught"] == train and sets["retained"] == []  # nothing trained before
    # The next round: what this one held out is trained on, what it trained on is "retained".
    active = AdapterVersion(
        "v0001",
        Path("."),
        pair_ids=[str(p.id) for p in train],
        heldout_pair_ids=[str(p.id) for p in sets["heldout"]],
    )
    new = [pair(21, "corrected")]
    train2, sets2 = split_for_gate(pairs + new, active, 0.2)
    assert {p.id for p in sets["heldout"]} <= {p.id for p in train2}
    assert {p.id for p in sets2["taught"]} == {21} | {p.id for p in sets["heldout"]}
    assert {p.id for p in sets2["retained"]} == {p.id for p in train} - {p.id for p in sets2["heldout"]}


def test_a_members_adapter_keeps_the_guild_pairs_its_stack_was_trained_on() -> None:
    from datetime import UTC, datetime

    from adapters.registry import AdapterVersion
    from bot.usecases.training import kept_guild_pairs
    from feedback.records import Pair

    shared = [
        Pair(i, "corrected", f"q{i}?", "", f"a{i}", ASKER, None, datetime.now(UTC))  # type: ignore[arg-type]
        for i in range(1, 9)
    ]
    guild = AdapterVersion("v0003", Path("."), pair_ids=["2", "3", "5", "6", "7"])  # 8: newer, untrained
    assert kept_guild_pairs(shared, None, 3) == []  # no guild adapter beneath: nothing to keep
    assert [p.id for p in kept_guild_pairs(shared, guild, 3)] == [7, 6, 5, 3, 2]
    assert [p.id for p in kept_guild_pairs(shared, guild, 1)] == [7, 6]  # two per member pair, newest


def test_progress_events_read_as_members_would_see_them() -> None:
    from bot.usecases.training import describe_progress

    assert describe_progress({"event": "step", "step": 10, "total": 40, "seconds": 20.0}) == (
        "training: step 10 of 40, about 60 s left"
    )
    assert "about 5 min left" in describe_progress({"event": "step", "step": 1, "total": 61, "seconds": 5.0})
    preference = {"event": "step", "step": 12, "total": 14, "phase": "preference"}
    assert describe_progress(preference) == "training: step 12 of 14 (preferences)"
    checked = {"event": "step", "step": 10, "total": 40, "seconds": 20.0, "until_learned": True}
    assert describe_progress(checked) == (
        "training: step 10 of at most 40 (until the taught facts are learned), at most 60 s left"
    )
    learned = {"event": "learned", "step": 36, "learned": 6, "of": 20}
    assert describe_progress(learned) == "training: 6 of 20 taught facts learned at step 36"
    assert describe_progress({"event": "gate", "pairs": 20}).startswith("gate: ") and "20 pairs" in (
        describe_progress({"event": "gate", "pairs": 20})
    )


def test_a_corrections_rejected_answer_is_the_answer_it_replaced(log) -> None:
    from bot.usecases.training import rejected_answers

    corrected, thumbed = _answer(log), _answer(log)
    log.add_correction(corrected.id, author_id="2002", text="Kittens eat 3-4 times a day.", message_id=None,
                       trusted=True)  # fmt: skip
    log.set_vote(thumbed.id, "2002", 1, True)
    pairs = log.pairs()
    assert sorted(p.kind for p in pairs) == ["corrected", "positive"]
    fixed = next(p for p in pairs if p.kind == "corrected")
    # Only a correction has a rejected answer; a 👍 answer is the answer members wanted.
    assert rejected_answers(log, pairs) == {fixed.id: "Once a week."}
    assert log.answer_texts([corrected.id, 999]) == {corrected.id: "Once a week."}


def test_larger_runs_replay_more_anchors() -> None:
    """Anchors grow with the run (40 pairs would drown 16), up to the 46 questions; 0 turns them off."""
    from bot.settings import Settings, TrainSettings
    from bot.usecases.training import anchor_count

    def count(pairs: int, **train: Any) -> int:
        return anchor_count(Settings(train=TrainSettings(**train)), pairs)

    assert [count(n) for n in (0, 8, 20, 27, 40, 100)] == [16, 16, 16, 17, 24, 46]
    assert count(40, anchors_per_pair=0.0) == 16 and count(40, anchors=0) == 0
    assert count(5, anchors=30) == 30


def test_a_members_adapter_is_retrained_when_the_guilds_beneath_it_changed(tmp_path) -> None:
    """Her adapter learned over (and kept the pairs of) the guild's v0001: once v0002 is served
    beneath it, it is due without new pairs; once retrained over v0002 it is not, even if refused."""
    from datetime import UTC, datetime

    from bot.settings import Settings
    from bot.usecases.training import needs_training
    from feedback.records import Pair

    guild = AdapterRegistry(tmp_path / "guild")
    member = AdapterRegistry(tmp_path / "member")

    def publish(registry: AdapterRegistry, **meta: Any):
        with registry.stage() as stage:
            (stage.path / "adapter_config.json").write_text("{}")
            (stage.path / "adapter_model.safetensors").write_bytes(b"weights")  # never read here
            return registry.publish(stage, {"base_model": "tiny", **meta})

    v1, v2 = publish(guild), publish(guild)
    pairs = [
        Pair(i, "corrected", f"q{i}", "", f"a{i}", "9", None, datetime.now(UTC), owner_id="9")
        for i in range(8)
    ]
    trained = {"pair_ids": [str(p.id) for p in pairs]}
    mine = publish(member, train_config={"beneath_adapter": str(v1.path)}, **trained)
    member.promote(mine.version)
    settings = Settings()
    assert needs_training(settings, pairs, member, beneath=v1) == (
        False,
        "0 new pair(s) since the last run, 8 needed",
    )
    due, why = needs_training(settings, pairs, member, beneath=v2)
    assert due and why == "the guild's adapter changed since v0001 was trained (v0001 -> v0002)"
    assert not needs_training(settings, pairs[:7], member, beneath=v2)[0]  # too few left to train on
    publish(member, train_config={"beneath_adapter": str(v2.path)}, **trained)  # retrained, not promoted
    assert not needs_training(settings, pairs, member, beneath=v2)[0]
