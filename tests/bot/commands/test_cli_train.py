"""`loopbot train` / `loopbot adapters ...` end to end on the tiny GPTQ model and a temp data dir,
including: forgotten members' pairs never reach a later adapter, and `adapters list` says which
versions still contain them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bot.cli import main
from feedback.dataset import split_pairs
from feedback.log import FeedbackLog

QUESTIONS = {
    "alice": ["What is Mochi's favourite toy?", "When was Mochi last at the vet?", "What does Mochi eat?"],
    "bob": ["Who organises the picnic?", "Where is the cat show?", "How much is the fee?"],
}


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gptq_dir: Path) -> Path:
    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOOPBOT_MODEL_BASE", str(tiny_gptq_dir))
    monkeypatch.setenv("LOOPBOT_MODEL_DEVICE", "cpu")
    monkeypatch.setenv("LOOPBOT_MODEL_MAX_NEW_TOKENS", "4")  # random weights: short answers keep it fast
    for name, value in {
        "STEPS": "2",
        "BATCH_SIZE": "2",
        "RANK": "4",
        "ALPHA": "8",
        "MIN_PAIRS": "2",
        "MIN_INTERVAL_HOURS": "0",
        "EVAL_FRACTION": "0.2",
        "ANCHORS": "3",
    }.items():
        monkeypatch.setenv(f"LOOPBOT_TRAIN_{name}", value)
    return tmp_path


GUILD = "1001"


def _upvoted(
    log: FeedbackLog, user: str, question: str, answer: str, guild: str = GUILD, private: bool = False
) -> None:
    """An answer to ``question`` with one 👍 (from its asker when private): one accepted pair."""
    answer_id = log.record_answer(
        guild_id=guild,
        channel_id="c",
        user_id=user,
        question=question,
        context="",
        chunk_ids=[],
        prompt="",
        prompt_version="t",
        adapter=None,
        answer=answer,
        private=private,
    )
    log.set_vote(answer_id, user if private else "voter", 1, True)


def _seed(log: FeedbackLog) -> dict[str, list[str]]:
    """One upvoted answer per question; returns each member's pair ids."""
    for user, questions in QUESTIONS.items():
        for question in questions:
            _upvoted(log, user, question, f"An answer about: {question}")
    return {user: [str(p.id) for p in log.pairs() if p.user_id == user] for user in QUESTIONS}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_with_no_pairs_says_so(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "train", "--no-progress")
    assert code == 2 and "pass --guild" in err  # no server has used the bot yet: say which
    code, _, err = _run(capsys, "train", "--no-progress", "--guild", GUILD)
    assert code == 2 and "Only 0 training pair(s)" in err and "nothing was trained" in err
    code, out, _ = _run(capsys, "train", "--if-needed", "--no-progress", "--guild", GUILD)
    assert code == 0 and "nothing trained: 0 new pair(s)" in out
    assert _run(capsys, "adapters", "list")[1].startswith("no adapters yet")


@pytest.mark.slow
def test_train_list_forget_promote_rollback(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = FeedbackLog(data_dir / "loopbot.db")
    ids = _seed(log)
    train_ids = {str(p.id) for p in split_pairs(log.pairs(), 0.2, 0)[0]}
    code, out, err = _run(capsys, "train", "--json", "--no-progress")
    assert code == 0, err
    first = json.loads(out)
    assert (
        first["trained"]
        and first["version"] == "v0001"
        and first["train_pairs"] + first["heldout_pairs"] == 6
    )
    assert Path(first["gate_report"]).is_file() and first["gate"]["regression_count"] >= 1
    # The base model's answers to 3 general questions were replayed, generated once and cached.
    registry_dir = data_dir / "adapters" / "guilds" / GUILD  # one server: nobody had to say which
    (cache,) = registry_dir.glob("cache-anchor-answers-*.json")
    anchors = json.loads(cache.read_text(encoding="utf-8"))  # question -> the base's answer
    first_meta = json.loads((registry_dir / "v0001" / "loopbot.json").read_text())
    assert first_meta["anchor_count"] == sum(1 for answer in anchors.values() if answer) >= 1
    cached_at = cache.stat().st_mtime_ns
    # The gate kept each stack's answers to the regression set: v0001's own, the bare base's.
    saved = json.loads((registry_dir / "v0001" / "regression_answers.json").read_text(encoding="utf-8"))
    (base_cache,) = registry_dir.glob("cache-regression-*.json")
    base_saved = json.loads(base_cache.read_text(encoding="utf-8"))
    assert (saved["stack"], base_saved["stack"]) == ([f"g{GUILD}-v0001"], [])
    assert len(saved["answers"]) == len(base_saved["answers"]) == first["gate"]["regression_count"]
    # Marked, so the next gate shows whether it asked the active and the base again or reused them.
    for kept, path in ((saved, registry_dir / "v0001" / "regression_answers.json"), (base_saved, base_cache)):
        kept["answers"] = [[q, expected, "SAVED", False, name] for q, expected, _, _, name in kept["answers"]]
        path.write_text(json.dumps(kept), encoding="utf-8")
    # Nothing new since v0001: the cron form trains nothing.
    code, out, _ = _run(capsys, "train", "--if-needed", "--no-progress")
    assert code == 0 and "nothing trained: 0 new pair(s)" in out

    log.forget_user("alice")
    assert not {str(p.id) for p in log.pairs()} & set(ids["alice"])  # pairs() leaves them out
    stale = len(set(ids["alice"]) & train_ids)
    rows = {r["version"]: r for r in json.loads(_run(capsys, "adapters", "list", "--json")[1])}
    assert rows["v0001"]["forgotten_pairs"] == stale
    if stale:
        assert "forgotten pair(s)" in _run(capsys, "adapters", "list")[1]

    code, out, err = _run(capsys, "train", "--json", "--no-progress", "--no-promote")
    assert code == 0, err
    second = json.loads(out)
    assert second["version"] == "v0002" and not second["promoted"]
    assert cache.stat().st_mtime_ns == cached_at  # reused, not regenerated
    meta = json.loads((registry_dir / "v0002" / "loopbot.json").read_text())
    assert not set(meta["pair_ids"]) & set(ids["alice"]) and meta["pair_ids"]
    # By default a run continues the active adapter, unless that one holds forgotten pairs.
    assert meta["parent"] == ("v0001" if first["promoted"] and not stale else None)
    rows = {r["version"]: r for r in json.loads(_run(capsys, "adapters", "list", "--json")[1])}
    assert rows["v0002"]["forgotten_pairs"] == 0
    with (registry_dir / "v0002" / "gate_report.csv").open(encoding="utf-8") as handle:
        regression = [row for row in csv.DictReader(handle) if row["set"] == "regression"]
    # Reused, not asked again: v0001's own answers if it was promoted, else the bare base's
    assert len(regression) == len(saved["answers"]) and {r["active_answer"] for r in regression} == {"SAVED"}
    assert {r["base_answer"] for r in regression} == ({"SAVED"} if first["promoted"] else {""})
    # The candidate answers only what routing gives it (its own questions); general questions are
    # the base's, reused too.
    assert {r["candidate_served"] for r in regression} == {"base"}
    assert {r["candidate_answer"] for r in regression} == {"SAVED"}

    assert _run(capsys, "adapters", "promote", "v0002")[0] == 0
    code, out, _ = _run(capsys, "adapters", "list")
    assert "* v0002" in out
    code, _, err = _run(capsys, "adapters", "promote", "1")
    if stale:  # v0001 was trained on a forgotten member's pairs: it can no longer be served
        assert code == 2 and "asked to be forgotten" in err
    else:
        assert code == 0
        code, out, _ = _run(capsys, "adapters", "rollback")
        assert code == 0 and "v0002 is now active" in out
    code, _, err = _run(capsys, "adapters", "promote", "v0009")
    assert code == 2 and "Known versions: v0001, v0002" in err
    # v0002 is active and holds no forgotten pairs: the next run continues it, unless told not to
    for flag, parent in ((), "v0002"), (("--no-from-active",), None):
        code, out, err = _run(capsys, "train", "--json", "--no-progress", "--no-promote", *flag)
        assert code == 0, err
        version = json.loads(out)["version"]
        assert json.loads((registry_dir / version / "loopbot.json").read_text())["parent"] == parent
    log.close()


@pytest.mark.slow
def test_demo_runs_the_whole_loop(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`loopbot demo` on the tiny model: ingest, answer with sources, feedback, train, gate, answer again."""
    out_file = data_dir / "demo.json"
    code, out, err = _run(capsys, "demo", "--steps", "2", "--no-progress", "--json", str(out_file))
    assert code == 0, err
    result = json.loads(out_file.read_text(encoding="utf-8"))
    assert result["version"] == "v0001" and len(result["rows"]) == 8
    assert all(row["before"] for row in result["rows"] if row["expected"])  # each fact asked once before
    assert "[1] kb/" in out  # answers cite the ingested sample posts
    log = FeedbackLog(data_dir / "loopbot.db")
    stats = log.stats()
    log.close()
    assert stats.answers == 9 and stats.corrections == 5 and stats.upvotes == 4
    assert "4. retraining" in out and "5. answering again" in out


@pytest.mark.slow
def test_a_members_own_adapter_trains_on_their_personal_pairs_only(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = FeedbackLog(data_dir / "loopbot.db")
    _seed(log)  # shared pairs of alice and bob in the guild
    member = "4242"
    questions = ["What is my cat's microchip?", "When is my vet visit?", "What does Luna eat?"]
    for n, question in enumerate(questions):
        # a private answer in the guild, then DMs (no guild): all hers alone
        _upvoted(log, member, question, f"Private answer: {question}", guild="" if n else GUILD, private=True)
    personal = {str(p.id) for p in log.pairs(owner_id=member)}
    shared = {str(p.id) for p in log.pairs()}
    assert len(personal) == 3 and not personal & shared

    code, out, err = _run(capsys, "train", "--member", member, "--json", "--no-progress", "--no-promote")
    assert code == 0, err
    report = json.loads(out)
    assert report["trained"] and report["version"] == "v0001"
    own = data_dir / "adapters" / "members" / member
    meta = json.loads((own / "v0001" / "loopbot.json").read_text())
    assert set(meta["pair_ids"]) <= personal and meta["pair_ids"]
    # No shared registry saw her pairs, and the member registry holds no one else's.
    for dataset in (data_dir / "adapters").rglob("dataset*.jsonl"):
        text = dataset.read_text(encoding="utf-8")
        assert ("Private answer" in text) == (own in dataset.parents)
    rows = json.loads(_run(capsys, "adapters", "list", "--member", member, "--json")[1])
    assert [r["version"] for r in rows] == ["v0001"]
    assert _run(capsys, "adapters", "promote", "v0001", "--member", member)[0] == 0
    assert json.loads(_run(capsys, "adapters", "list", "--member", member, "--json")[1])[0]["active"]
    code, out, _ = _run(capsys, "adapters", "rollback", "--member", member)
    assert code == 0 and "the bare base model is now active" in out
    code, _, err = _run(capsys, "train", "--member", "alice")
    assert code == 2 and "Discord user id (digits)" in err
    code, _, err = _run(capsys, "adapters", "list", "--member", member, "--guild", GUILD)
    assert code == 2 and "not both" in err  # only training takes both (over that server's adapter)
    # Trained over the guild's active adapter (served stacked on it there): the gate compares stacks.
    code, _, err = _run(capsys, "train", "--guild", GUILD, "--json", "--no-progress", "--no-promote")
    assert code == 0, err
    assert _run(capsys, "adapters", "promote", "v0001", "--guild", GUILD)[0] == 0
    code, out, err = _run(
        capsys, "train", "--member", member, "--guild", GUILD, "--json", "--no-progress", "--no-promote"
    )
    assert code == 0, err
    assert json.loads(out)["version"] == "v0002"
    meta = json.loads((own / "v0002" / "loopbot.json").read_text())
    guild_version = data_dir / "adapters" / "guilds" / GUILD / "v0001"
    assert meta["train_config"]["beneath_adapter"] == str(guild_version)
    # ... with the guild's pairs beside hers (so it keeps them), listed so that forgetting their
    # authors retires this version too; her private pairs still reach no shared adapter.
    guild_pairs = json.loads((guild_version / "loopbot.json").read_text())["pair_ids"]
    kept = set(guild_pairs) & set(meta["pair_ids"])
    own_pairs = set(meta["pair_ids"]) - set(guild_pairs)
    assert max(guild_pairs, key=int) in kept and len(kept) <= 2 * len(own_pairs)  # newest, capped
    assert "Private answer" not in (guild_version / "dataset.jsonl").read_text(encoding="utf-8")
    with (own / "v0002" / "gate_report.csv").open(encoding="utf-8") as report:
        assert sum(1 for _ in report) > 1
    from safetensors import safe_open

    def keys(path: Path) -> set[str]:
        with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as handle:
            return set(handle.keys())

    assert keys(own / "v0002") == keys(own / "v0001")  # only the member's own LoRA is saved
    # Forgetting an author of the guild's pairs (alice asked about Mochi) retires this adapter too and
    # scrubs her pairs from its stored dataset.
    dataset = own / "v0002" / "dataset.jsonl"
    assert "Mochi" in dataset.read_text(encoding="utf-8")
    assert _run(capsys, "adapters", "promote", "v0002", "--member", member)[0] == 0
    code, _, err = _run(capsys, "forget", "--user", "alice")
    assert code == 0, err
    listed = json.loads(_run(capsys, "adapters", "list", "--member", member, "--json")[1])
    assert [r["version"] for r in listed if r["active"]] == ["v0001"]  # the newest without her pairs
    assert not dataset.exists() or "Mochi" not in dataset.read_text(encoding="utf-8")
    files = [f for f in own.rglob("*") if f.is_file()]  # datasets, gate reports, logs, weights
    assert files and not any("Mochi" in f.read_text(encoding="utf-8", errors="ignore") for f in files)
    log.close()


def test_imported_facts_train_with_an_eval_set_kept_out(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An owner's records: imported for one server, trained with a share kept out as an eval set. The
    kept-out facts are never in the training data or the adapter's scope; their eval loss is in the
    version's learning curve and the gate's report lists them, and they do not decide promotion."""
    facts = [
        {"instruction": f"Which locker belongs to member {n}?", "output": f"Locker {n}{n}."}
        for n in range(1, 9)
    ]
    records = tmp_path / "records.json"
    records.write_text(json.dumps(facts), encoding="utf-8")
    assert _run(capsys, "dataset", "import", str(records), "--guild", GUILD)[0] == 0

    code, out, err = _run(capsys, "train", "--guild", GUILD, "--no-progress", "--eval-fraction", "0.25")
    assert code == 0, err
    assert "eval loss after each epoch" in out and "learning_curve.csv" in out
    log = FeedbackLog(data_dir / "loopbot.db")
    taught = log.pairs(guild_id=GUILD)
    log.close()
    kept_out = {p.instruction for p in taught} - {p.instruction for p in split_pairs(taught, 0.25)[0]}
    assert kept_out and len(kept_out) < len(facts)
    (version,) = (data_dir / "adapters" / "guilds" / GUILD).glob("v0001")
    trained_on = (version / "dataset.jsonl").read_text(encoding="utf-8")
    assert not any(q in trained_on for q in kept_out)
    assert all(q in (version / "eval.jsonl").read_text(encoding="utf-8") for q in kept_out)
    assert not kept_out & set(
        json.loads((version / "questions.json").read_text(encoding="utf-8"))["questions"]
    )
    with (version / "gate_report.csv").open(encoding="utf-8") as handle:
        gated = [row["question"] for row in csv.DictReader(handle) if row["set"] == "eval"]
    assert sorted(gated) == sorted(kept_out)
    with (version / "learning_curve.csv").open(encoding="utf-8") as handle:
        assert any(row["eval_loss"] for row in csv.DictReader(handle))

    with pytest.raises(SystemExit):
        main(["train", "--guild", GUILD, "--eval-fraction", "1.5"])
    assert "not a share in [0, 1)" in capsys.readouterr().err


@pytest.mark.slow
def test_the_base_models_own_answers_are_kept_beside_it_for_every_server(
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    tiny_gptq_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """What depends on the base model alone (its answers to the anchors and to the regression set) is
    answered by the first run on a machine and kept in the model's directory: a new server's first
    run, in any data dir, replays and reuses it instead of asking the base again."""
    import shutil

    from adapters.registry import BASE_CACHE_DIR

    model = data_dir.parent / "model"  # a copy: the session's tiny model keeps nothing of this test
    shutil.copytree(tiny_gptq_dir, model, ignore=shutil.ignore_patterns(BASE_CACHE_DIR))
    monkeypatch.setenv("LOOPBOT_MODEL_BASE", str(model))
    log = FeedbackLog(data_dir / "loopbot.db")
    _seed(log)
    log.close()
    code, _, err = _run(capsys, "train", "--json", "--no-progress", "--guild", GUILD)
    assert code == 0, err
    (anchors_file,) = (model / BASE_CACHE_DIR).glob("anchor-answers-*.json")
    (regression_file,) = (model / BASE_CACHE_DIR).glob("regression-*.json")
    # Marked, to see them come back in another data dir's first run instead of new answers.
    anchors = {question: "KEPT ANCHOR" for question in json.loads(anchors_file.read_text("utf-8"))}
    anchors_file.write_text(json.dumps(anchors), encoding="utf-8")
    regression = json.loads(regression_file.read_text("utf-8"))
    regression["answers"] = [
        [q, expected, "KEPT", False, name] for q, expected, _, _, name in regression["answers"]
    ]
    regression_file.write_text(json.dumps(regression), encoding="utf-8")

    other = tmp_path_factory.mktemp("other-data-dir")
    monkeypatch.setenv("LOOPBOT_DATA_DIR", str(other))
    log = FeedbackLog(other / "loopbot.db")
    _seed(log)
    log.close()
    code, _, err = _run(capsys, "train", "--json", "--no-progress", "--guild", GUILD)
    assert code == 0, err
    version_dir = other / "adapters" / "guilds" / GUILD / "v0001"
    assert "KEPT ANCHOR" in (version_dir / "dataset.jsonl").read_text(encoding="utf-8")
    with (version_dir / "gate_report.csv").open(encoding="utf-8") as handle:
        asked = [row for row in csv.DictReader(handle) if row["set"] == "regression"]
    assert asked and {row["active_answer"] for row in asked} == {"KEPT"}  # the bare base's, kept
