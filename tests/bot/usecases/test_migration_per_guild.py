"""Upgrading a data dir from before per-guild learning and private pairs loses no vote and no version."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from adapters.registry import AdapterRegistry, guild_registry
from bot.usecases.serving import adopt_legacy_adapters, resolve_guild
from feedback.log import FeedbackLog
from feedback.migrations import MIGRATIONS

GUILD = "1001"


def _old_database(path: Path) -> None:
    """A feedback log as the previous release left it: m001 + m002, one guild answer and one DM answer,
    each upvoted."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    now = datetime.now(UTC).isoformat()
    for fn in MIGRATIONS[:2]:
        fn(conn)
        conn.execute("INSERT INTO _migrations VALUES (?, ?)", (fn.__name__, now))
    for answer_id, guild in ((1, GUILD), (2, "")):
        conn.execute(
            "INSERT INTO answers VALUES (?, ?, 'c', 'u1', 'q?', '', '[]', 'p', 'rag-v1', NULL, 'a.', ?)",
            (answer_id, guild, now),
        )
        conn.execute("INSERT INTO votes VALUES (?, 'voter', 1, ?)", (answer_id, now))
        conn.execute(
            "INSERT INTO pairs (kind, instruction, input, output, user_id, answer_id, source, content_hash,"
            " created_at) VALUES ('positive', 'q?', '', 'a.', 'u1', ?, 'discord', ?, ?)",
            (answer_id, f"h{answer_id}", now),
        )
    conn.close()


def test_the_log_migrates_without_losing_a_vote_and_dm_pairs_become_personal(tmp_path: Path) -> None:
    path = tmp_path / "loopbot.db"
    _old_database(path)

    log = FeedbackLog(path)
    try:
        assert "m003_private_pairs" in log.db.applied
        assert log.get_answer(1).upvotes == 1 and log.get_answer(2).upvotes == 1
        assert not log.get_answer(1).private and log.get_answer(2).private
        (shared,) = log.pairs()
        assert shared.answer_id == 1 and shared.guild_id == GUILD and shared.owner_id is None
        (personal,) = log.pairs(owner_id="u1")
        assert personal.answer_id == 2 and personal.guild_id is None
        assert log.guild_ids() == [GUILD]
    finally:
        log.close()


def _legacy_registry(adapters_dir: Path, make_lora_adapter, tiny_model_dir, versions: int) -> AdapterRegistry:
    """A registry laid out as before per-guild adapters: versions at the top of the adapters dir."""
    legacy = AdapterRegistry(adapters_dir)
    for seed in range(1, versions + 1):
        with legacy.stage() as stage:
            for item in make_lora_adapter(tiny_model_dir, seed=seed).iterdir():
                shutil.copy(item, stage.path / item.name)
            legacy.publish(stage, {"base_model": "tiny"})
    return legacy


def _log_with_answers(path: Path, guilds: tuple[str, ...]) -> FeedbackLog:
    log = FeedbackLog(path)
    for guild in guilds:
        log.record_answer(
            guild_id=guild, channel_id="c", user_id="u", question="q?", context="", chunk_ids=[],
            prompt="", prompt_version="t", adapter=None, answer="a",
        )  # fmt: skip
    return log


def test_legacy_adapters_move_to_the_only_guild_with_their_history(
    tmp_path: Path, make_lora_adapter, tiny_model_dir
) -> None:
    adapters_dir = tmp_path / "adapters"
    legacy = _legacy_registry(adapters_dir, make_lora_adapter, tiny_model_dir, versions=2)
    legacy.promote("v0001")
    legacy.promote("v0002")
    log = _log_with_answers(tmp_path / "loopbot.db", (GUILD,))
    try:
        assert adopt_legacy_adapters(adapters_dir, log) == GUILD
        guild = guild_registry(adapters_dir, GUILD)
        assert guild.versions() == ["v0001", "v0002"] and guild.active().version == "v0002"
        assert guild.active().served_name == f"g{GUILD}-v0002"
        assert [e["version"] for e in guild.history()] == ["v0001", "v0002"]
        assert guild.rollback().version == "v0001"
        assert AdapterRegistry(adapters_dir).versions() == []
        assert resolve_guild(adapters_dir, log, None) == GUILD  # one server: nobody has to say which
        assert adopt_legacy_adapters(adapters_dir, log) is None  # nothing left to adopt
    finally:
        log.close()


def test_legacy_adapters_of_several_guilds_stay_unserved(
    tmp_path: Path, make_lora_adapter, tiny_model_dir
) -> None:
    import pytest

    from adapters.errors import AdapterError

    adapters_dir = tmp_path / "adapters"
    legacy = _legacy_registry(adapters_dir, make_lora_adapter, tiny_model_dir, versions=1)
    log = _log_with_answers(tmp_path / "loopbot.db", ("1001", "1002"))
    try:
        assert adopt_legacy_adapters(adapters_dir, log) is None
        assert legacy.versions() == ["v0001"] and guild_registry(adapters_dir, "1001").versions() == []
        with pytest.raises(AdapterError, match="pass --guild with one of: 1001, 1002"):
            resolve_guild(adapters_dir, log, None)
        assert json.loads((adapters_dir / "v0001" / "loopbot.json").read_text())["base_model"] == "tiny"
    finally:
        log.close()


def test_taught_pairs_migrate_every_pair_and_never_reuse_a_deleted_pairs_id(tmp_path: Path) -> None:
    """m004 rebuilds the pairs table (a new kind): the rows, their guild and owner, and the id counter
    survive, so the id of a pair deleted before the upgrade (a forget) never comes back."""
    path = tmp_path / "loopbot.db"
    _old_database(path)
    conn = sqlite3.connect(path, isolation_level=None)
    now = datetime.now(UTC).isoformat()
    for fn in MIGRATIONS[2:3]:  # up to m003, as the previous release left it
        fn(conn)
        conn.execute("INSERT INTO _migrations VALUES (?, ?)", (fn.__name__, now))
    conn.execute(
        "INSERT INTO pairs (kind, instruction, input, output, source, content_hash, created_at)"
        " VALUES ('positive', 'gone?', '', 'yes.', 'seed', 'h9', ?)",
        (now,),
    )
    conn.execute("DELETE FROM pairs WHERE instruction = 'gone?'")  # id 3, forgotten
    conn.close()

    log = FeedbackLog(path)
    try:
        assert "m004_taught_pairs" in log.db.applied
        (shared,) = log.pairs()
        assert shared.id == 1 and shared.guild_id == GUILD and shared.answer_id == 1
        (personal,) = log.pairs(owner_id="u1")
        assert personal.id == 2 and personal.owner_id == "u1"
        report = log.import_pairs([{"instruction": "New?", "output": "Taught."}], source="f", guild_id=GUILD)
        assert report.imported == 1
        (taught,) = log.pairs(kinds=("taught",))
        assert taught.id == 4 and taught.guild_id == GUILD  # not 3: that pair was deleted
    finally:
        log.close()
