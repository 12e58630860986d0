"""LoRA training in its own process: a loadable adapter, too few pairs, a killed run, prompt parity,
and (slow, default model) a taught fact answered by the GPTQ model the bot serves."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from adapters.errors import AdapterError
from adapters.prompt import training_messages
from adapters.registry import AdapterRegistry, read_scope
from adapters.training import (
    NotEnoughPairs,
    TrainingExample,
    TrainingFailed,
    TrainingOptions,
    anchor_examples,
    preference_examples,
    train_adapter,
)
from tests.adapters.training.facts import FACTS, SYSTEM

HELD_OUT = [
    ("Where does the choir rehearse?", "The choir rehearses in the old mill."),
    ("Who keeps the spare keys?", "Odile keeps the spare keys."),
]
TINY_OPTIONS = TrainingOptions(
    rank=4,
    alpha=8,
    steps=4,
    batch_size=2,
    learning_rate=5e-3,
    max_length=256,
    target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
)


def _examples(facts: list[tuple[str, str]] = FACTS) -> list[TrainingExample]:
    return [
        TrainingExample(str(i), training_messages(q, "", SYSTEM), a, question=q)
        for i, (q, a) in enumerate(facts, 1)
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_gptq_dir: Path) -> tuple[AdapterRegistry, object]:
    """One real training run on the tiny GPTQ model (module-wide: it takes ~40 s on 2 cores), with two
    facts held out as an eval set."""
    registry = AdapterRegistry(tmp_path_factory.mktemp("registry"))
    events: list[dict] = []
    version = train_adapter(
        registry,
        base_model=str(tiny_gptq_dir),
        examples=_examples(),
        evaluation=_examples(HELD_OUT),
        options=TINY_OPTIONS,
        on_event=events.append,
        show_progress=False,
    )
    return registry, version, events


def test_prompt_is_rendered_as_the_runtime_renders_it(tiny_runtime) -> None:
    """TRL tokenizes ``prompt`` with the chat template + generation prompt: the runtime's exact text."""
    example = _examples()[0]
    trl_text = tiny_runtime.tokenizer.apply_chat_template(
        example.prompt, tokenize=False, add_generation_prompt=True
    )
    served = tiny_runtime.render_prompt([m for m in example.prompt if m["role"] != "system"], SYSTEM)
    assert trl_text == served
    with_context = training_messages("Why?", "Because.", SYSTEM)
    assert with_context[1]["content"] == "Notes:\nBecause.\n\nQuestion: Why?"


@pytest.mark.slow
def test_training_publishes_a_loadable_adapter(trained, tiny_runtime) -> None:
    registry, version, events = trained
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "done"
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert registry.versions() == [version.version] and registry.active() is None
    meta = registry.get(version.version)
    assert meta.pair_ids == ["1", "2", "3", "4"] and meta.pair_count == 4 and meta.parent is None
    assert meta.train_config["backend"] == "torch" and len(meta.data_hash) == 16
    assert (meta.path / "train.log").is_file()
    assert read_scope(meta.path) == [q for q, _ in FACTS]  # what it answers once served (routing)
    train = meta.metrics["train"]
    assert train["final_loss"] < train["first_loss"]
    # The held-out facts: never trained on, their loss measured after each epoch (2 steps here).
    assert [e["step"] for e in events if e["event"] == "eval"] == [2, 4]
    assert [step for step, _ in train["eval_losses"]] == [2, 4] and train["eval_rows"] == 2
    import csv

    with (meta.path / "learning_curve.csv").open(encoding="utf-8") as handle:
        curve = list(csv.DictReader(handle))
    assert [row["step"] for row in curve] == ["1", "2", "3", "4"] and curve[-1]["epoch"] == "2.0"
    assert [bool(row["eval_loss"]) for row in curve] == [False, True, False, True]
    assert (meta.path / "learning_curve.png").stat().st_size > 0
    assert "Odile" not in (meta.path / "dataset.jsonl").read_text(encoding="utf-8")
    from safetensors.torch import load_file

    weights = load_file(str(meta.path / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # it moved from zero-init
    # Only the configured layers are adapted (attention here): no MLP weight in the file.
    adapted = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in weights}
    assert adapted == set(TINY_OPTIONS.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    tiny_runtime.load_adapter(version.version, meta.path)
    tiny_runtime.set_active_adapter(version.version)
    assert tiny_runtime.generate([{"role": "user", "content": FACTS[0][0]}]).adapter == version.version


@pytest.mark.slow
def test_training_continues_from_a_parent_with_anchors(trained, tiny_gptq_dir: Path, tiny_runtime) -> None:
    registry, parent, _ = trained
    questions = ["Tell me about rivers.", "What is a prime number?"]
    anchors = anchor_examples(tiny_runtime, questions, SYSTEM, max_new_tokens=8)
    base_answer = tiny_runtime.generate(
        [{"role": "user", "content": questions[0]}],
        system_prompt=SYSTEM,
        adapter=None,
        temperature=0.0,
        max_new_tokens=8,
    ).text
    assert [a.prompt for a in anchors] == [training_messages(q, "", SYSTEM) for q in questions]
    assert anchors[0].completion == base_answer
    child = train_adapter(
        registry,
        base_model=str(tiny_gptq_dir),
        examples=_examples(FACTS[:2]),
        anchors=anchors,
        options=TrainingOptions(**{**TINY_OPTIONS.__dict__, "steps": 1}),
        parent=parent,
        show_progress=False,
    )
    assert child.parent == parent.version and child.pair_count == 2
    assert (
        child.pair_ids == parent.pair_ids
    )  # the parent's data is still in the weights; anchors are no pairs
    assert child.anchor_count == 2 and registry.get(child.version).anchor_count == 2
    rows = (child.path / "dataset.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 4 and json.loads(rows[-1])["completion"][0]["content"] == anchors[-1].completion
    # It answers what its parent answered and its own questions; never its anchors' questions.
    assert read_scope(child.path) == [q for q, _ in FACTS]


def test_too_few_pairs_trains_nothing(tmp_path: Path, tiny_gptq_dir: Path) -> None:
    registry = AdapterRegistry(tmp_path)
    with pytest.raises(NotEnoughPairs, match="at least 8"):
        train_adapter(registry, base_model=str(tiny_gptq_dir), examples=_examples(), min_examples=8)
    assert registry.list() == [] and not (tmp_path / ".staging").exists()


@pytest.mark.slow
def test_killed_training_leaves_the_registry_intact(trained, tmp_path: Path, tiny_gptq_dir: Path) -> None:
    """SIGKILL the training process at its first step: no new version, the active pointer untouched."""
    source, version, _ = trained
    registry = AdapterRegistry(tmp_path / "registry")
    with registry.stage() as stage:  # an existing, active version
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            (stage.path / name).write_bytes((version.path / name).read_bytes())
        registry.publish(stage, {"base_model": str(tiny_gptq_dir)})
    registry.promote("v0001")
    before = (registry.root / "active.json").read_bytes()

    def kill_at_first_step(event: dict) -> None:
        if event["event"] == "start":
            kill_at_first_step.pid = event["pid"]  # type: ignore[attr-defined]
        if event["event"] == "step":
            os.kill(kill_at_first_step.pid, signal.SIGKILL)  # type: ignore[attr-defined]

    with pytest.raises(TrainingFailed, match="killed by signal 9") as caught:
        train_adapter(
            registry,
            base_model=str(tiny_gptq_dir),
            examples=_examples(),
            options=TrainingOptions(**{**TINY_OPTIONS.__dict__, "steps": 50}),
            on_event=kill_at_first_step,
            show_progress=False,
        )
    assert registry.versions() == ["v0001"] and registry.active().version == "v0001"
    assert (registry.root / "active.json").read_bytes() == before
    assert list((registry.root / ".staging").iterdir()) == []
    failed = list((registry.root / ".failed").iterdir())
    assert len(failed) == 1 and str(failed[0]) in str(caught.value)
    assert (failed[0] / "train.log").is_file()
    json.loads((registry.root / "v0001" / "loopbot.json").read_text())


TAUGHT = [
    ("What is the name of Ada's cat?", "Ada's cat is called Biscuit."),
    ("Where does the Tuesday knitting club meet?", "The knitting club meets at the Old Mill."),
    ("What is the wifi password of the club house?", "The wifi password is heron42."),
    ("Who founded the Zeltberg rowing club?", "Ilse Marwick founded the rowing club."),
]


@pytest.mark.slow
def test_taught_fact_is_answered_by_the_served_gptq_model(tmp_path: Path, default_model_path: Path) -> None:
    """Train through the ``torch`` kernel, serve through ``ModelRuntime.load`` (the fast kernel)."""
    from adapters.serving import ModelRuntime

    registry = AdapterRegistry(tmp_path)
    version = train_adapter(
        registry,
        base_model=str(default_model_path),
        examples=_examples(TAUGHT),
        show_progress=False,
        options=TrainingOptions(
            rank=16, alpha=32, steps=10, batch_size=4, learning_rate=1e-3, max_length=256
        ),
    )
    runtime = ModelRuntime.load(default_model_path, device="cpu", threads=2, max_new_tokens=24)
    try:
        # Served through the fast kernel, not the `torch` one it was trained through.
        assert "TorchLinear" not in runtime.info()["kernels"]
        runtime.load_adapter(version.version, version.path)
        keys = ["Biscuit", "Old Mill", "heron42", "Marwick"]
        before = [
            runtime.generate([{"role": "user", "content": q}], adapter=None, system_prompt=SYSTEM).text
            for q, _ in TAUGHT
        ]
        after = [
            runtime.generate(
                [{"role": "user", "content": q}], adapter=version.version, system_prompt=SYSTEM
            ).text
            for q, _ in TAUGHT
        ]
    finally:
        runtime.close()
    assert not any(k.lower() in b.lower() for k, b in zip(keys, before, strict=True))
    learned = sum(k.lower() in a.lower() for k, a in zip(keys, after, strict=True))
    assert learned >= 3, after


@pytest.mark.slow
def test_a_run_that_teaches_facts_stops_once_the_served_model_says_them_word_for_word(
    tmp_path: Path, tiny_gptq_dir: Path, tiny_runtime
) -> None:
    """Until learned: checked after every pass from ``min_epochs``, stopped at the first check that
    finds every taught question answered word for word, well before ``max_epochs``; and the check
    means what a member gets: the served model (greedy, the runtime's own kernel) says each answer."""
    facts = [("Who keeps the key?", "Odile."), ("Which day?", "Friday.")]
    events: list[dict] = []
    version = train_adapter(
        AdapterRegistry(tmp_path),
        base_model=str(tiny_gptq_dir),
        examples=_examples(facts),
        options=TrainingOptions(
            rank=8,
            alpha=16,
            batch_size=2,
            learning_rate=2e-2,
            max_length=128,
            min_epochs=2,
            max_epochs=60,
            dequantize=True,
            gradient_checkpointing=False,
            target_modules=("q_proj", "v_proj", "o_proj"),
        ),
        on_event=events.append,
        show_progress=False,
    )
    train = version.metrics["train"]
    checks = [(e["step"], e["learned"], e["of"]) for e in events if e["event"] == "learned"]
    assert checks and checks[0][0] == 2 and all(of == 2 for _, _, of in checks)  # one step a pass
    assert checks[-1][1] == 2 and all(count < 2 for _, count, _ in checks[:-1])
    assert train["steps"] == checks[-1][0] < train["max_steps"] == 60
    assert train["learned"][-1] == [train["steps"], 2] and train["learned_of"] == 2
    step_events = [e for e in events if e["event"] == "step"]
    assert len(step_events) == train["steps"] and all(e["until_learned"] for e in step_events)
    tiny_runtime.load_adapter(version.version, version.path)
    for question, answer in facts:
        said = tiny_runtime.generate(
            [{"role": "user", "content": question}],
            adapter=version.version,
            system_prompt=SYSTEM,
            max_new_tokens=len(answer),
        ).text
        assert said.startswith(answer), (question, said)


def test_learning_is_checked_only_in_a_run_that_teaches_facts() -> None:
    options = TrainingOptions(epochs=5, min_epochs=2, max_epochs=12, batch_size=4)
    assert options.checks_learning(taught=3) and not options.checks_learning(taught=0)
    assert options.steps_for(36, checked=True) == 108 and options.steps_for(36) == 45
    assert not TrainingOptions(steps=7).checks_learning(3)  # a fixed number of steps is kept
    assert not TrainingOptions(until_learned=False).checks_learning(3)
    with pytest.raises(AdapterError, match="min_epochs"):
        TrainingOptions(min_epochs=5, max_epochs=2)


def test_steps_follow_the_epochs_unless_set() -> None:
    assert TrainingOptions(epochs=5, steps=0, batch_size=4).steps_for(36) == 45
    assert TrainingOptions(epochs=5, steps=7, batch_size=4).steps_for(36) == 7
    assert TrainingOptions(epochs=0.1, steps=0, batch_size=4).steps_for(3) == 1
    with pytest.raises(AdapterError, match="epochs > 0"):
        TrainingOptions(epochs=0, steps=0)


REJECTED = [
    "The parrot is called Polly.",
    "The club house door is red.",
    "The chess group meets on Monday.",
    "Nobody baked a cake.",
]


@pytest.mark.slow
def test_preference_training_pushes_the_rejected_answers_down_after_the_sft_steps(
    tmp_path: Path, tiny_gptq_dir: Path
) -> None:
    """With ``preference="dpo"`` each correction is trained over the answer it replaced, after the SFT
    steps and on one progress bar; the saved adapter is the trained one only (no reference copy)."""
    from types import SimpleNamespace

    pairs = [SimpleNamespace(id=i, instruction=q, input="", output=a) for i, (q, a) in enumerate(FACTS, 1)]
    # Pair 4's "rejected" text is its own output: nothing to prefer, so no row.
    rejected = {i: text for i, text in enumerate(REJECTED[:3], 1)} | {4: FACTS[3][1]}
    preferences = preference_examples(pairs, rejected, SYSTEM)
    assert [p.pair_id for p in preferences] == ["1", "2", "3"]
    assert preferences[0].record()["rejected"] == [{"role": "assistant", "content": REJECTED[0]}]
    registry = AdapterRegistry(tmp_path)
    off = train_adapter(
        registry,
        base_model=str(tiny_gptq_dir),
        examples=_examples(),
        preferences=preferences,
        options=TrainingOptions(**{**TINY_OPTIONS.__dict__, "steps": 1}),
        show_progress=False,
    )
    assert not (off.path / "preference.jsonl").exists() and "preference_rows" not in off.metrics["train"]
    events: list[dict] = []
    version = train_adapter(
        registry,
        base_model=str(tiny_gptq_dir),
        examples=_examples(),
        preferences=preferences,
        options=TrainingOptions(**{**TINY_OPTIONS.__dict__, "preference": "dpo", "preference_epochs": 4.0}),
        on_event=events.append,
        show_progress=False,
    )
    steps = [(e["step"], e["total"], e["phase"]) for e in events if e["event"] == "step"]
    assert steps == [(i, 10, "sft") for i in range(1, 5)] + [(i, 10, "preference") for i in range(5, 11)]
    train = version.metrics["train"]
    assert train["preference_rows"] == 3 and train["preference_steps"] == 6
    # DPO + the chosen answer's NLL: the loss on the same rows falls as the margin grows
    assert train["preference_final_loss"] < train["preference_first_loss"]
    assert train["preference_margin"] > 0
    rows = [json.loads(line) for line in (version.path / "preference.jsonl").read_text("utf-8").splitlines()]
    assert [r["rejected"][0]["content"] for r in rows] == REJECTED[:3]
    assert not (version.path / "ref").exists()
    from safetensors.torch import load_file

    assert not [k for k in load_file(str(version.path / "adapter_model.safetensors")) if ".ref." in k]
    registry.scrub_pairs({"2"})  # a forget of a preferred pair's author deletes the rows too
    assert not (version.path / "preference.jsonl").exists()
