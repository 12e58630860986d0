"""ModelRuntime on the tiny GPTQ Llama: generation, streaming, stop strings, adapters, concurrency, errors."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from adapters.errors import AdapterError
from adapters.serving import ACTIVE, Generation, ModelRuntime

QUESTION = [{"role": "user", "content": "What is the capital of Japan?"}]


def test_loads_gptq_checkpoint_and_reports_it(tiny_runtime: ModelRuntime, tiny_gptq_dir: Path) -> None:
    info = tiny_runtime.info()
    assert info["base"] == str(tiny_gptq_dir)
    assert info["quantization"] == "gptq"
    assert info["bits"] == 4 and info["group_size"] == 32
    assert info["device"] == "cpu"
    assert info["kernels"], "the linear layers should be gptqmodel kernels"
    assert info["adapters"] == [] and info["active"] is None


def test_generate_greedy_is_deterministic_and_counts_tokens(tiny_runtime: ModelRuntime) -> None:
    first = tiny_runtime.generate(QUESTION, max_new_tokens=8)
    second = tiny_runtime.generate(QUESTION, max_new_tokens=8)
    assert isinstance(first, Generation)
    assert first.text == second.text
    assert 1 <= first.completion_tokens <= 8
    prompt = tiny_runtime.render_prompt(QUESTION)
    assert first.prompt_tokens == tiny_runtime.count_tokens(prompt)
    assert first.first_token_seconds is not None and first.seconds >= first.first_token_seconds
    assert first.adapter is None


def test_chat_template_and_system_prompt_are_used(tiny_runtime: ModelRuntime) -> None:
    prompt = tiny_runtime.render_prompt(QUESTION, system_prompt="Be brief.")
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")
    # An explicit system prompt replaces one already in the messages.
    replaced = tiny_runtime.render_prompt(
        [{"role": "system", "content": "Old."}, *QUESTION], system_prompt="New."
    )
    assert "Old." not in replaced and "New." in replaced


def test_streaming_pieces_join_to_the_answer(tiny_runtime: ModelRuntime) -> None:
    pieces: list[str] = []
    result = tiny_runtime.generate(QUESTION, max_new_tokens=10, on_token=pieces.append)
    assert len(pieces) >= 2
    assert "".join(pieces).strip() == result.text


def test_stop_string_cuts_the_answer_and_the_stream(tiny_runtime: ModelRuntime) -> None:
    full = tiny_runtime.generate(QUESTION, max_new_tokens=12).text
    assert len(full) > 4
    stop = full[2:4]  # a string the unconstrained answer contains
    pieces: list[str] = []
    cut = tiny_runtime.generate(QUESTION, max_new_tokens=12, stop=[stop], on_token=pieces.append)
    assert stop not in cut.text
    assert full.startswith(cut.text)
    assert stop not in "".join(pieces)


def test_two_adapters_change_outputs_and_base_stays_available(
    tiny_runtime: ModelRuntime, tiny_model_dir: Path, make_lora_adapter
) -> None:
    base = tiny_runtime.generate(QUESTION).text
    tiny_runtime.load_adapter("a-v1", make_lora_adapter(tiny_model_dir, seed=1))
    tiny_runtime.load_adapter("b-v1", make_lora_adapter(tiny_model_dir, seed=2))
    assert tiny_runtime.adapters == ["a-v1", "b-v1"]
    out_a = tiny_runtime.generate(QUESTION, adapter="a-v1")
    out_b = tiny_runtime.generate(QUESTION, adapter="b-v1")
    assert out_a.adapter == "a-v1" and out_b.adapter == "b-v1"
    assert len({base, out_a.text, out_b.text}) == 3
    # Base-only generation with adapters attached equals the plain base model.
    assert tiny_runtime.generate(QUESTION, adapter=None).text == base
    tiny_runtime.set_active_adapter("b-v1")
    assert tiny_runtime.active_adapter == "b-v1"
    assert tiny_runtime.generate(QUESTION).text == out_b.text
    tiny_runtime.unload_adapter("b-v1")
    assert tiny_runtime.active_adapter is None and tiny_runtime.adapters == ["a-v1"]
    assert tiny_runtime.generate(QUESTION, adapter="a-v1").text == out_a.text
    tiny_runtime.unload_adapter("a-v1")
    assert tiny_runtime.generate(QUESTION).text == base
    assert tiny_runtime.info()["adapters"] == []


def test_queued_request_keeps_its_adapter_when_active_switches(
    tiny_runtime: ModelRuntime, tiny_model_dir: Path, make_lora_adapter
) -> None:
    tiny_runtime.load_adapter("a", make_lora_adapter(tiny_model_dir, seed=1))
    tiny_runtime.load_adapter("b", make_lora_adapter(tiny_model_dir, seed=2))
    expected_a = tiny_runtime.generate(QUESTION, adapter="a").text
    tiny_runtime.set_active_adapter("a")
    gate = threading.Event()
    blocker = tiny_runtime.submit(QUESTION, max_new_tokens=3, on_token=lambda _: gate.wait(5))
    queued = tiny_runtime.submit(QUESTION, adapter=ACTIVE)  # resolved to "a" now
    tiny_runtime.set_active_adapter("b")
    gate.set()
    blocker.result()
    assert queued.result().adapter == "a"
    assert queued.result().text == expected_a


def test_concurrent_threads_match_sequential(tiny_runtime: ModelRuntime) -> None:
    questions = [[{"role": "user", "content": f"Tell me fact number {i}."}] for i in range(6)]
    sequential = [tiny_runtime.generate(q).text for q in questions]
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = tiny_runtime.generate(questions[i]).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(questions))] == sequential


async def test_asyncio_concurrency_matches_sequential_and_streams_on_loop(tiny_runtime: ModelRuntime) -> None:
    questions = [[{"role": "user", "content": f"Question {i}?"}] for i in range(4)]
    sequential = [tiny_runtime.generate(q).text for q in questions]
    loop_thread = threading.get_ident()
    seen_threads: set[int] = set()
    pieces: list[str] = []

    def on_token(piece: str) -> None:
        seen_threads.add(threading.get_ident())
        pieces.append(piece)

    ticks = 0

    async def ticker() -> None:  # proves the loop keeps running while the model generates
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    tick_task = asyncio.create_task(ticker())
    streamed = tiny_runtime.agenerate(questions[0], on_token=on_token)
    results = await asyncio.gather(streamed, *(tiny_runtime.agenerate(q) for q in questions[1:]))
    tick_task.cancel()
    assert [r.text for r in results] == sequential
    assert seen_threads == {loop_thread}
    assert "".join(pieces).strip() == results[0].text
    assert ticks > 1


def test_plain_checkpoint_loads_too(tiny_model_dir: Path) -> None:
    with ModelRuntime.load(tiny_model_dir, device="cpu", max_new_tokens=4) as runtime:
        assert runtime.info()["quantization"] is None
        assert runtime.generate(QUESTION).completion_tokens >= 1


# ----- bad input ----------------------------------------------------------------------------


def test_missing_adapter_dir(tiny_runtime: ModelRuntime, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="does not exist"):
        tiny_runtime.load_adapter("x", tmp_path / "nope")


def test_corrupt_adapter_dir(
    tiny_runtime: ModelRuntime, tiny_model_dir: Path, make_lora_adapter, tmp_path: Path
) -> None:
    import shutil

    broken_config = tmp_path / "broken-config"
    shutil.copytree(make_lora_adapter(tiny_model_dir, seed=3), broken_config)
    (broken_config / "adapter_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(AdapterError, match="corrupt"):
        tiny_runtime.load_adapter("x", broken_config)

    broken_weights = tmp_path / "broken-weights"
    shutil.copytree(make_lora_adapter(tiny_model_dir, seed=3), broken_weights)
    (broken_weights / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(AdapterError, match="corrupt"):
        tiny_runtime.load_adapter("x", broken_weights)
    assert tiny_runtime.adapters == []


def test_adapter_for_another_base(
    tiny_runtime: ModelRuntime, other_tiny_model_dir: Path, make_lora_adapter
) -> None:
    path = make_lora_adapter(other_tiny_model_dir, seed=1)
    assert json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    with pytest.raises(AdapterError, match="different base model"):
        tiny_runtime.load_adapter("other", path)
    assert tiny_runtime.adapters == []


def test_unknown_adapter_names(tiny_runtime: ModelRuntime) -> None:
    with pytest.raises(AdapterError, match="No adapter named"):
        tiny_runtime.set_active_adapter("ghost")
    with pytest.raises(AdapterError, match="No adapter named"):
        tiny_runtime.generate(QUESTION, adapter="ghost")
    with pytest.raises(AdapterError, match="No adapter named"):
        tiny_runtime.unload_adapter("ghost")


def test_missing_model_and_offline_hub_id(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="loopbot model prepare"):
        ModelRuntime.load(tmp_path / "missing-model")
    with pytest.raises(AdapterError, match="not on this machine and the hub is offline"):
        ModelRuntime.load("TheBloke/Llama-2-13B-chat-GPTQ")


def test_closed_runtime_refuses_work(tiny_gptq_dir: Path) -> None:
    runtime = ModelRuntime.load(tiny_gptq_dir, device="cpu")
    runtime.close()
    with pytest.raises(AdapterError, match="closed"):
        runtime.generate(QUESTION)


def test_a_looping_answer_stops_generating(tiny_tokenizer_dir: Path) -> None:
    """The streamer stops a row once its text loops (no 96 tokens of "The Purrsuit The Purrsuit …"),
    and keeps the first round only; digits repeated are not a loop."""
    import threading

    from transformers import AutoTokenizer

    from adapters.serving._streaming import _Streamer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    streamer = _Streamer(tokenizer, (), None, threading.Event())
    ids = tokenizer("Prizes: The Purrsuit  The Purrsuit  The Purrsuit  The Purrsuit  The Purrsuit").input_ids
    fed = 0
    while not streamer.should_stop() and fed < len(ids):
        streamer.put_ids([ids[fed]])
        fed += 1
    streamer.end()
    assert streamer.should_stop() and fed < len(ids)
    assert streamer.final_text() == "Prizes: The Purrsuit"

    plain = _Streamer(tokenizer, (), None, threading.Event())
    for token in tokenizer("The fund holds 1000000 dollars, 100 100 100.").input_ids:
        plain.put_ids([token])
    assert not plain.should_stop()


def test_a_loop_the_last_checks_missed_is_cut_at_the_end(
    tiny_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop check runs every few tokens; whatever came after the last one is checked at the end."""
    import threading

    from transformers import AutoTokenizer

    import adapters.serving._streaming
    from adapters.serving._streaming import _Streamer

    monkeypatch.setattr(adapters.serving._streaming, "LOOP_CHECK_TOKENS", 10**9)  # no check until the end
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    streamer = _Streamer(tokenizer, (), None, threading.Event())
    for token in tokenizer("Prizes: The Purrsuit  The Purrsuit  The Purrsuit  The Purrsuit").input_ids:
        streamer.put_ids([token])
    assert not streamer.should_stop()
    streamer.end()
    assert streamer.final_text() == "Prizes: The Purrsuit"


def test_a_closed_runtime_lets_go_of_its_model(tiny_gptq_dir: Path) -> None:
    """In a fresh process (the leak came from the first import of gptqmodel, during the first load):
    once a runtime is closed and dropped, its model is freed, so a CLI can make room for training."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import gc, weakref
        from adapters.serving import ModelRuntime

        def build():
            runtime = ModelRuntime.load({str(tiny_gptq_dir)!r}, device="cpu", max_new_tokens=4)
            runtime.generate([{{"role": "user", "content": "Hi"}}])
            return runtime

        runtime = build()
        model = weakref.ref(runtime._base_model)
        runtime.close()
        del runtime
        gc.collect()
        print("freed" if model() is None else "kept")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "freed"
