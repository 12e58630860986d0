"""The pair policy (bot/usecases/pairs.py): what trains, what the gate holds out, when to train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.registry import AdapterRegistry
from tests.bot.usecases.conftest import ASKER


def test_the_gate_sets_train_every_correction_and_rotate_the_held_out_answers(log) -> None:
    from datetime import UTC, datetime

    from adapters.registry import AdapterVersion
    from bot.usecases.pairs import split_for_gate
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
    from bot.usecases.pairs import kept_guild_pairs
    from feedback.records import Pair

    shared = [
        Pair(i, "corrected", f"q{i}?", "", f"a{i}", ASKER, None, datetime.now(UTC))  # type: ignore[arg-type]
        for i in range(1, 9)
    ]
    guild = AdapterVersion("v0003", Path("."), pair_ids=["2", "3", "5", "6", "7"])  # 8: newer, untrained
    assert kept_guild_pairs(shared, None, 3) == []  # no guild adapter beneath: nothing to keep
    assert [p.id for p in kept_guild_pairs(shared, guild, 3)] == [7, 6, 5, 3, 2]
    assert [p.id for p in kept_guild_pairs(shared, guild, 1)] == [7, 6]  # two per member pair, newest


def test_a_corrections_rejected_answer_is_the_answer_it_replaced(log, answer_in) -> None:
    from bot.usecases.pairs import rejected_answers

    corrected, thumbed = answer_in(), answer_in()
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
    from bot.usecases.pairs import anchor_count

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
    from bot.usecases.pairs import needs_training
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
