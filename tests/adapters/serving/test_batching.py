"""Continuous batching on the tiny real GPTQ model: rows with different adapters in one forward,
requests joining and leaving a running batch, members before background work, a bounded queue."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from adapters.serving import BACKGROUND, BASE, AdapterChoice, ModelRuntime, RuntimeBusy

QUESTION = [{"role": "user", "content": "What does Mochi the cat do in the morning?"}]


def ask(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Tell me fact number {i}."}]


@pytest.fixture
def small_runtime(tiny_gptq_dir: Path) -> Iterator[ModelRuntime]:
    """One row at a time, one member's question allowed to wait: queueing is easy to observe."""
    runtime = ModelRuntime.load(tiny_gptq_dir, device="cpu", max_new_tokens=8, max_batch=1, max_waiting=1)
    yield runtime
    runtime.close()


class Hold:
    """An ``on_token`` that holds the worker at a request's first piece until released, so that
    what happens next is queued deterministically."""

    def __init__(self) -> None:
        self.started, self.released = threading.Event(), threading.Event()

    def __call__(self, _piece: str) -> None:
        if not self.started.is_set():
            self.started.set()
            assert self.released.wait(10)


def finish_order(futures: dict[str, Future]) -> Callable[[], list[str]]:
    order: list[str] = []
    for name, future in futures.items():
        future.add_done_callback(lambda _f, name=name: order.append(name))
    return lambda: order


def test_lora_bank_matches_peft_per_row(tiny_gptq_dir: Path, tiny_model_dir: Path, make_lora_adapter) -> None:
    """One forward over rows [adapter a, base, adapter b] equals peft applying each alone."""
    import torch
    from peft import PeftModel

    from adapters.model import load_base_model, module_shapes
    from adapters.serving import LoraBank, check_adapter_dir, read_adapter

    paths = {"a": make_lora_adapter(tiny_model_dir, seed=1), "b": make_lora_adapter(tiny_model_dir, seed=2)}
    model, tokenizer = load_base_model(tiny_gptq_dir, device="cpu")
    ids = tokenizer(["Mochi sneezes in the morning."] * 3, return_tensors="pt")["input_ids"]
    shapes = module_shapes(model)
    bank = LoraBank(model)
    for name, path in paths.items():
        bank.add(name, read_adapter(path, check_adapter_dir(path, shapes, str(tiny_gptq_dir))))
    bank.use([("a",), (), ("b",)])
    with torch.inference_mode():
        ours = model(input_ids=ids).logits.float()
        bank.remove("a")
        bank.remove("b")
        base = model(input_ids=ids[:1]).logits.float()
        peft = PeftModel.from_pretrained(model, str(paths["a"]), adapter_name="a")
        peft.load_adapter(str(paths["b"]), adapter_name="b")
        expected = {}
        for name in paths:
            peft.set_adapter(name)
            expected[name] = peft(input_ids=ids[:1]).logits.float()
    assert not torch.allclose(expected["a"], base, atol=1e-2)  # the adapters do change the output
    torch.testing.assert_close(ours[0:1], expected["a"], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ours[1:2], base, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ours[2:3], expected["b"], atol=2e-2, rtol=2e-2)


def test_rows_with_different_adapters_share_a_batch(
    tiny_runtime: ModelRuntime, tiny_model_dir: Path, make_lora_adapter
) -> None:
    tiny_runtime.load_adapter("a", make_lora_adapter(tiny_model_dir, seed=1))
    tiny_runtime.load_adapter("b", make_lora_adapter(tiny_model_dir, seed=2))
    choices = ["a", None, "b", "a"]
    alone = [tiny_runtime.generate(ask(i), adapter=name).text for i, name in enumerate(choices)]
    tiny_runtime.peak_batch(reset=True)
    hold = Hold()
    first = tiny_runtime.submit(ask(0), adapter="a", on_token=hold)
    assert hold.started.wait(10)
    rest = [tiny_runtime.submit(ask(i), adapter=name) for i, name in enumerate(choices) if i]
    hold.released.set()
    together = [f.result() for f in [first, *rest]]
    assert [g.text for g in together] == alone
    assert [g.adapter for g in together] == choices
    assert tiny_runtime.peak_batch() == len(choices)


def test_a_request_joins_the_running_batch_and_leaves_when_done(tiny_runtime: ModelRuntime) -> None:
    long_alone = tiny_runtime.generate(ask(1), max_new_tokens=24)
    short_alone = tiny_runtime.generate(ask(2), max_new_tokens=3)
    assert long_alone.completion_tokens > short_alone.completion_tokens + 3
    hold = Hold()
    long = tiny_runtime.submit(ask(1), max_new_tokens=24, on_token=hold)
    assert hold.started.wait(10)
    short = tiny_runtime.submit(ask(2), max_new_tokens=3)  # arrives while the long one runs
    order = finish_order({"long": long, "short": short})
    hold.released.set()
    assert long.result().text == long_alone.text
    assert short.result().text == short_alone.text
    assert order() == ["short", "long"]  # it did not wait for the long answer to finish


def test_cancel_ends_one_row_and_the_others_go_on(tiny_runtime: ModelRuntime) -> None:
    other_alone = tiny_runtime.generate(ask(3), max_new_tokens=12).text
    cancel = threading.Event()
    hold = Hold()
    doomed = tiny_runtime.submit(ask(1), max_new_tokens=200, on_token=hold, cancel=cancel)
    assert hold.started.wait(10)
    other = tiny_runtime.submit(ask(3), max_new_tokens=12)
    cancel.set()
    hold.released.set()
    assert doomed.result().completion_tokens < 5
    assert other.result().text == other_alone


def test_members_questions_go_before_background_work(small_runtime: ModelRuntime) -> None:
    hold = Hold()
    running = small_runtime.submit(ask(0), on_token=hold)
    assert hold.started.wait(10)
    background = {f"gate{i}": small_runtime.submit(ask(i), priority=BACKGROUND) for i in range(1, 4)}
    member = small_runtime.submit(ask(9))
    order = finish_order({"running": running, **background, "member": member})
    hold.released.set()
    for future in [member, *background.values()]:
        future.result()
    assert order() == ["running", "member", "gate1", "gate2", "gate3"]


def test_a_full_queue_tells_the_member_where_they_stand(small_runtime: ModelRuntime) -> None:
    hold = Hold()
    running = small_runtime.submit(ask(0), on_token=hold)
    assert hold.started.wait(10)
    waiting = small_runtime.submit(ask(1))
    with pytest.raises(
        RuntimeBusy, match=r"writing 1 answer\(s\), with 1 question\(s\) waiting before yours\. Ask again"
    ):
        small_runtime.submit(ask(2))
    assert small_runtime.queue_load() == {"running": 1, "waiting": 1, "background_waiting": 0}
    evaluation = small_runtime.submit(ask(3), priority=BACKGROUND)  # background work is not refused
    hold.released.set()
    assert all(f.result().completion_tokens > 0 for f in (running, waiting, evaluation))
    assert small_runtime.generate(ask(2)).completion_tokens > 0  # room again once the queue drained


def test_anchors_queue_as_background_work_however_many(small_runtime: ModelRuntime) -> None:
    """A large run's anchors (more than a member's queue holds) are all answered, not refused."""
    from adapters.training import anchor_examples

    hold = Hold()
    member = small_runtime.submit(ask(0), on_token=hold)
    assert hold.started.wait(10)
    done: list[int] = []
    worker = threading.Thread(
        target=lambda: done.append(len(anchor_examples(small_runtime, [f"Q{i}?" for i in range(5)], "S")))
    )
    worker.start()
    waiting = small_runtime.submit(ask(1))  # a member still gets a place ahead of them
    hold.released.set()
    worker.join(60)
    assert member.result().completion_tokens > 0 and waiting.result().completion_tokens > 0
    assert done and done[0] <= 5 and small_runtime.queue_load()["background_waiting"] == 0


def test_unload_waits_for_the_requests_that_use_the_adapter(
    tiny_runtime: ModelRuntime, tiny_model_dir: Path, make_lora_adapter
) -> None:
    tiny_runtime.load_adapter("a", make_lora_adapter(tiny_model_dir, seed=1))
    expected = tiny_runtime.generate(QUESTION, adapter="a").text
    hold = Hold()
    using = tiny_runtime.submit(QUESTION, adapter="a", on_token=hold)
    assert hold.started.wait(10)
    unloading = threading.Thread(target=tiny_runtime.unload_adapter, args=("a",))
    unloading.start()
    unloading.join(0.3)
    assert unloading.is_alive()  # still in use
    assert "a" not in tiny_runtime.adapters  # but no new request can ask for it
    hold.released.set()
    unloading.join(10)
    assert not unloading.is_alive()
    assert using.result().text == expected


def test_stacked_adapters_add_their_deltas(
    tiny_gptq_dir: Path, tiny_model_dir: Path, make_lora_adapter
) -> None:
    """A row with (a, b) gets base + delta_a + delta_b on every layer both adapt (a member's
    adapter stacked on the guild's)."""
    import torch

    from adapters.model import load_base_model, module_shapes
    from adapters.serving import LoraBank, check_adapter_dir, read_adapter

    model, _ = load_base_model(tiny_gptq_dir, device="cpu")
    shapes = module_shapes(model)
    deltas = {
        name: read_adapter(path, check_adapter_dir(path, shapes, str(tiny_gptq_dir)))
        for name, path in (
            ("a", make_lora_adapter(tiny_model_dir, seed=1)),
            ("b", make_lora_adapter(tiny_model_dir, seed=3, r=8)),  # ranks differ: padded in the stack
        )
    }
    bank = LoraBank(model)
    for name, delta in deltas.items():
        bank.add(name, delta)
    module_name = "model.layers.0.self_attn.q_proj"
    layer = dict(model.named_modules())[module_name]
    x = torch.randn(2, 3, shapes[module_name][0]).to(next(model.parameters()).dtype)
    with torch.inference_mode():
        bank.use([(), ()])
        base = layer(x).float()
        bank.use([("a", "b"), ("b",)])
        stacked = layer(x).float()
    expected = base.clone()
    for row, names in enumerate((("a", "b"), ("b",))):
        for name in names:
            d = deltas[name][module_name]
            expected[row] += (x[row].float() @ d.a.float().T) @ d.b.float().T * d.scale
    torch.testing.assert_close(stacked, expected, atol=3e-2, rtol=3e-2)
    assert not torch.allclose(stacked[0], stacked[1], atol=1e-2)


def test_a_stack_of_adapters_is_served_and_named(
    tiny_runtime: ModelRuntime, tiny_model_dir: Path, make_lora_adapter
) -> None:
    tiny_runtime.load_adapter("guild", make_lora_adapter(tiny_model_dir, seed=1))
    tiny_runtime.load_adapter("member", make_lora_adapter(tiny_model_dir, seed=2))
    stacked = tiny_runtime.generate(QUESTION, adapter=AdapterChoice(("guild", "member")))
    assert stacked.adapter == "guild+member"
    assert stacked.text not in {tiny_runtime.generate(QUESTION, adapter=a).text for a in ("guild", "member")}


def test_prompts_admitted_together_are_prefilled_together(tiny_runtime: ModelRuntime) -> None:
    """Prompts of different lengths, admitted in one step, go through one padded forward and answer
    exactly as alone (positions and padding right), each with its own adapter."""
    engine = tiny_runtime._engine
    prompts = [ask(1), [{"role": "user", "content": "Tell me fact number 12, and then one more."}], ask(3)]
    alone = [tiny_runtime.generate(p, max_new_tokens=10).text for p in prompts]
    groups: list[int] = []
    prefill = engine._prefill

    def counted(group: list) -> None:
        groups.append(len(group))
        prefill(group)

    engine._prefill = counted  # type: ignore[method-assign]
    try:
        hold = Hold()
        first = tiny_runtime.submit(ask(0), max_new_tokens=10, on_token=hold)
        assert hold.started.wait(10)
        rest = [tiny_runtime.submit(p, max_new_tokens=10) for p in prompts]
        hold.released.set()
        together = [f.result().text for f in rest]
        first.result()
    finally:
        engine._prefill = prefill  # type: ignore[method-assign]
    assert groups == [1, 3]
    assert together == alone


def test_prefill_groups_keep_padding_and_size_bounded() -> None:
    from adapters.serving._requests import PREFILL_MAX_TOKENS, Request, prefill_groups

    def request(length: int) -> Request:
        return Request([1] * length, BASE, 4, 0.0, (), None, threading.Event())

    lengths = [
        [len(r.prompt_ids) for r in g]
        for g in prefill_groups([request(n) for n in (41, 10, 200, 12, 40, 11)])
    ]
    assert lengths == [[10, 11, 12], [40, 41], [200]]
    big = PREFILL_MAX_TOKENS // 2
    assert [len(g) for g in prefill_groups([request(big)] * 3)] == [2, 1]
    assert prefill_groups([]) == []


def test_a_long_prompt_is_read_in_chunks_while_the_batch_keeps_answering(
    tiny_runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grounded question's long prompt arriving while another answer streams is prefilled a chunk a
    step, a decode step of the running answer after each chunk, and answers as it does alone (where,
    with nothing else to decode, it is read in one forward)."""
    from adapters.serving import _engine

    monkeypatch.setattr(_engine, "PREFILL_CHUNK", 8)
    long_prompt = [
        {"role": "user", "content": "Passages: Mochi sneezes in the morning after breakfast. " * 3}
    ]
    long_alone = tiny_runtime.generate(long_prompt, max_new_tokens=6)
    running_alone = tiny_runtime.generate(ask(1), max_new_tokens=40)
    read = long_alone.prompt_tokens - len(tiny_runtime._system_turn(None))  # after the cached system turn
    chunks = -(-read // 8)
    assert chunks >= 4 and running_alone.completion_tokens >= chunks + 2
    events: list[str] = []
    hold = Hold()

    def running_token(piece: str) -> None:
        hold(piece)
        events.append("running")

    running = tiny_runtime.submit(ask(1), max_new_tokens=40, on_token=running_token)
    assert hold.started.wait(10)
    events.append("long submitted")
    long = tiny_runtime.submit(long_prompt, max_new_tokens=6, on_token=lambda _piece: events.append("long"))
    hold.released.set()
    assert long.result().text == long_alone.text
    assert running.result().text == running_alone.text
    between = events[events.index("long submitted") : events.index("long")]
    assert between.count("running") >= chunks - 1, events  # one decode step after every chunk but the last


def test_the_system_turn_is_computed_once_per_adapter_and_answers_stay_the_same(
    tiny_runtime: ModelRuntime, tiny_model_dir: Path, make_lora_adapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every prompt starts with the system prompt's turn: its keys and values are computed once per
    adapter stack and reused by every later prompt, alone, grouped (padding between the turn and the
    question) or read in chunks, with the answers of prompts computed whole; an unloaded adapter's
    entry goes."""
    from adapters.serving import _engine

    system = "You are loopbot. Answer in one short sentence from the notes."
    asks = [ask(1), [{"role": "user", "content": "Tell me fact number 12, and then one more. " * 3}], ask(3)]
    tiny_runtime.load_adapter("a", make_lora_adapter(tiny_model_dir, seed=1))
    prefixes = tiny_runtime._engine.prefixes

    def answers() -> list[str]:
        alone = [tiny_runtime.generate(m, system_prompt=system).text for m in asks]
        hold = Hold()
        first = tiny_runtime.submit(ask(0), system_prompt=system, on_token=hold)
        assert hold.started.wait(10)
        together = [tiny_runtime.submit(m, system_prompt=system) for m in asks]  # one padded group
        hold.released.set()
        first.result()
        adapted = tiny_runtime.generate(asks[0], system_prompt=system, adapter="a").text
        return [*alone, *(f.result().text for f in together), adapted]

    monkeypatch.setattr(_engine, "PREFILL_CHUNK", 16)  # the long ask is read in chunks while others run
    reused = answers()
    assert prefixes.computed == 2  # the base's and adapter a's
    monkeypatch.setattr(type(tiny_runtime), "_system_turn", lambda self, system_prompt: [])
    assert answers() == reused  # every prompt computed whole
    assert prefixes.computed == 2
    tiny_runtime.unload_adapter("a")
    assert [key[1] for key in prefixes._entries] == [()]
