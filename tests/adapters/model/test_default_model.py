"""The offline default model (prepare: idempotent, atomic) and the regression evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.errors import AdapterError
from adapters.gate import (
    RegressionQuestion,
    accuracy,
    divergence_from_reference,
    is_correct,
    load_regression_questions,
    regression_conversations,
    run_regression,
    write_regression_csv,
)
from adapters.model import MARKER, default_model_dir, is_prepared, prepare_default_model
from adapters.model import _default_model as default_model

# ----- prepare: idempotent and atomic (no model work needed) ----------------------------------


def test_prepared_model_is_not_rebuilt(tmp_path: Path) -> None:
    final = default_model_dir(tmp_path)
    final.mkdir(parents=True)
    (final / MARKER).write_text("{}", encoding="utf-8")

    def must_not_run(_: Path) -> list[str]:
        raise AssertionError("calibration ran for an already prepared model")

    assert prepare_default_model(tmp_path, progress=False, calibration_fn=must_not_run) == final
    assert not default_model.plain_model_dir(tmp_path).exists()


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    final = tmp_path / "model"
    with pytest.raises(RuntimeError), default_model._building(final) as tmp:
        (tmp / "half-written").write_text("x")
        raise RuntimeError("killed halfway")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_half_finished_directory_is_replaced(tmp_path: Path) -> None:
    final = tmp_path / "model"
    final.mkdir()
    (final / "stale-shard.safetensors").write_text("old")  # no marker: an interrupted run
    (tmp_path / ".model.tmp-99999").mkdir()  # left by a killed run
    assert not is_prepared(final)
    with default_model._building(final) as tmp:
        (tmp / MARKER).write_text("{}")
    assert is_prepared(final)
    assert not (final / "stale-shard.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_gguf_ships_with_the_wheel() -> None:
    path = default_model.gguf_path()
    assert path.name == default_model.GGUF_FILE and path.stat().st_size > 50_000_000


def test_gguf_is_parsed_once_during_a_conversion() -> None:
    """The memoized reader and name map return one object per argument, and are undone after."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    path = default_model.gguf_path()
    with default_model._gguf_read_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first
        assert first.fields["general.architecture"].contents() == "llama"
        llama = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == "llama")
        assert gguf.get_tensor_name_map(llama, 30) is gguf.get_tensor_name_map(llama, 30)
        assert gguf.get_tensor_name_map(llama, 30) is not gguf.get_tensor_name_map(llama, 2)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)
    assert gguf.GGUFReader(path) is not first


def test_calibration_prompts_are_not_the_regression_questions() -> None:
    from adapters.model._calibration import INSTRUCTIONS, rag_prompts, topic_requests

    regression = {q.question for q in load_regression_questions()}
    assert not regression & set(INSTRUCTIONS)  # the anchors: replayed in training, never what the gate asks
    requests = topic_requests(192)
    assert len(set(requests)) == 192 and not regression & set(requests)
    prompts = rag_prompts(4)
    # Laid out as the answer chain lays out its passages: one prompt module owns both.
    assert all(p[-1]["content"].startswith("Notes:\n") and "[1]" not in p[-1]["content"] for p in prompts)


def test_shipped_calibration_is_for_this_model_and_prompt() -> None:
    from adapters.model._calibration import CALIBRATION_FILE, Recipe, shipped_calibration

    texts = shipped_calibration(default_model.gguf_path())
    assert texts is not None, (
        f"{CALIBRATION_FILE.name} was made from another model file, prompt or recipe: regenerate it with "
        "`python -m adapters.model` (prepare would otherwise generate it on every machine)"
    )
    recipe = Recipe()
    assert len(texts) == recipe.n_chat + recipe.n_rag + recipe.n_prose + recipe.n_topics
    # The key follows what is answered: another recipe or prompt is not served the shipped texts.
    assert shipped_calibration(default_model.gguf_path(), Recipe(n_chat=recipe.n_chat - 1)) is None


def test_prepare_generates_calibration_when_the_shipped_one_is_stale(tmp_path: Path, monkeypatch) -> None:
    from adapters.model import _calibration

    monkeypatch.setattr(_calibration, "CALIBRATION_FILE", tmp_path / "absent.json.gz")
    built: list[Path] = []
    monkeypatch.setattr(_calibration, "build_calibration", lambda plain, **_: built.append(plain) or ["x"])
    said: list[str] = []
    assert default_model._calibration_texts(tmp_path, said.append, False) == (["x"], "generated")
    assert built == [tmp_path] and "python -m adapters.model" in said[0]


# ----- evaluation -----------------------------------------------------------------------------


def test_packaged_regression_questions() -> None:
    from adapters.gate import core_regression_questions

    core, questions = core_regression_questions(), load_regression_questions()
    assert len(core) == 15 and questions[:15] == core  # the product's fixed set comes first
    assert questions[0] == RegressionQuestion("What is the capital of Japan?", ("Tokyo",))
    assert sum(1 for q in questions if not q.expected_any) == 1  # the ungradable "current president"
    assert len(questions) == 71 and len({q.question for q in questions}) == 71
    assert all(q.expected_any for q in questions[15:])


@pytest.mark.parametrize(
    ("answer", "expected", "correct"),
    [
        ("The capital of Japan is Tokyo.", "Tokyo", True),
        ("the capital is TOKYO", "Tokyo", True),
        ("There are eight planets.", "8|eight", True),
        ("There are 9 planets.", "8|eight", False),
        ("北海道です。", "北海道|Hokkaido", True),
        ("Anything at all.", "", None),
        ("Anything at all.", " | ", None),
        ("H₂O", ["H2O", "H₂O"], True),
    ],
)
def test_is_correct(answer: str, expected, correct: bool | None) -> None:
    assert is_correct(answer, expected) is correct


def test_bad_question_files(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="Cannot read"):
        load_regression_questions(tmp_path / "missing.csv")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("q,a\nx,y\n", encoding="utf-8")
    with pytest.raises(AdapterError, match="question,expected_any"):
        load_regression_questions(wrong)
    empty = tmp_path / "empty.csv"
    empty.write_text("question,expected_any\n", encoding="utf-8")
    with pytest.raises(AdapterError, match="no questions"):
        load_regression_questions(empty)


def test_run_regression_and_csv(tiny_runtime, tmp_path: Path) -> None:
    questions = [RegressionQuestion("Say something.", ("zzzqqq",)), RegressionQuestion("Who is it?", ())]
    results = run_regression(tiny_runtime, questions=questions, max_new_tokens=4)
    assert [r.correct for r in results] == [False, None]
    assert accuracy(results) == 0.0
    out = write_regression_csv(results, tmp_path / "r.csv")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "question,expected,answer,correct"
    assert lines[1].startswith("Say something.,zzzqqq,") and lines[1].endswith(",false")
    assert lines[2].endswith(",")


def test_divergence_is_zero_against_itself_and_grows_with_noise(tiny_model_dir: Path) -> None:
    import torch

    from adapters.model import load_base_model

    model, tokenizer = load_base_model(tiny_model_dir, dtype="float32")
    noisy, _ = load_base_model(tiny_model_dir, dtype="float32")
    with torch.no_grad():
        for param in noisy.parameters():
            param.add_(torch.randn_like(param) * param.std())
    conversations = [[{"role": "user", "content": q}] for q in ("Hello?", "What is two plus two?")]
    same = divergence_from_reference(model, model, tokenizer, conversations, max_new_tokens=12)
    assert same.tokens > 0 and same.agreement == 1.0 and same.kl == pytest.approx(0.0, abs=1e-5)
    worse = divergence_from_reference(noisy, model, tokenizer, conversations, max_new_tokens=12)
    assert worse.tokens == same.tokens
    assert worse.kl > 0.01 and worse.agreement < 1.0


# ----- the real default model (prepared by CI before the tests) -------------------------------


@pytest.mark.slow
def test_default_model_is_a_4bit_gptq_checkpoint(default_model_path: Path) -> None:
    assert is_prepared(default_model_path)
    config = json.loads((default_model_path / "config.json").read_text())
    assert config["quantization_config"]["bits"] == 4
    assert config["quantization_config"]["quant_method"] == "gptq"
    assert json.loads((default_model_path / MARKER).read_text())["calibration_texts"] >= 32


@pytest.mark.slow
def test_shipped_calibration_matches_a_fresh_build(default_model_path: Path) -> None:
    """The fp32 model's greedy answers are deterministic: building them here gives the shipped texts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.model._calibration import Recipe, _answer_all, shipped_calibration

    shipped = shipped_calibration(default_model.gguf_path())
    assert shipped is not None
    plain = default_model.plain_model_dir(default_model_path.parent)
    tokenizer = AutoTokenizer.from_pretrained(str(plain))
    model = AutoModelForCausalLM.from_pretrained(str(plain), dtype="float32").eval()
    conversations, max_new_tokens, batch_size = Recipe().answered()[0]  # the chat answers, one batch
    fresh = _answer_all(model, tokenizer, conversations, max_new_tokens, batch_size)
    same = sum(a == b for a, b in zip(fresh, shipped, strict=False))
    # Another CPU may round a near tie the other way in one answer; most must match exactly.
    assert same >= 0.9 * len(fresh), [(a, b) for a, b in zip(fresh, shipped, strict=False) if a != b][:2]


@pytest.mark.slow
def test_default_model_answers_and_streams(default_runtime) -> None:
    pieces: list[str] = []
    result = default_runtime.generate(
        [{"role": "user", "content": "What is the capital of Japan?"}], on_token=pieces.append
    )
    assert "tokyo" in result.text.lower()
    assert "".join(pieces).strip() == result.text


@pytest.mark.slow
def test_default_model_stays_close_to_the_unquantized_model(default_model_path: Path) -> None:
    from adapters.model import load_base_model
    from adapters.serving import install_fast_paths as install
    from bot.settings import DEFAULT_SYSTEM_PROMPT

    quantized, tokenizer = load_base_model(default_model_path, device="cpu")  # served dtype (bf16)
    install(quantized)  # as served: prompts through dense bf16 weights, decode attention by matmuls
    plain, _ = load_base_model(default_model.plain_model_dir(default_model_path.parent), device="cpu")
    conversations = regression_conversations(DEFAULT_SYSTEM_PROMPT)
    divergence = divergence_from_reference(quantized, plain, tokenizer, conversations)
    # Measured (bench/quantization_quality.py): agreement 0.91, KL 0.075 nats/token; the plain model
    # itself served in bf16: agreement 0.99. A broken quantization scores agreement near 0.
    assert divergence.tokens > 300
    assert divergence.agreement >= 0.85
    assert divergence.kl <= 0.25


@pytest.mark.slow
def test_default_model_regression_accuracy(default_runtime) -> None:
    from bot.settings import DEFAULT_SYSTEM_PROMPT

    results = run_regression(default_runtime, adapter=None, system_prompt=DEFAULT_SYSTEM_PROMPT)
    # Measured (bench/quantization_quality.py, bench/regression_set.py): 4-bit 5-6 of the product's 14
    # gradable questions here and 56 of the 56 general ones (chosen as those fp32 and 4-bit answer).
    # The same recipe prepared on another CPU answered 3/14 (bf16 arithmetic differs), so exact answers
    # do not bound quality: the divergence test above does. This floor catches a broken answer path.
    assert sum(bool(r.correct) for r in results) >= 35, [(r.question, r.answer) for r in results]
