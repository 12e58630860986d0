"""The base model: loading a checkpoint (GPTQ 4-bit or plain), and preparing the offline default one.

- :mod:`~adapters.model._loading`: :func:`load_base_model` (device, kernel, dtype) and the shapes of
  its layers (:func:`module_shapes`), what serving and training both load through
- :mod:`~adapters.model._default_model`: :func:`prepare_default_model`, SmolLM2's GGUF to an fp32
  checkpoint to GPTQ 4-bit (:func:`convert_gguf`, :func:`quantize`), and where they live
- :mod:`~adapters.model._calibration`: the calibration text GPTQ fits to, and :data:`INSTRUCTIONS`,
  the general questions it opens with (training replays them as anchors)

``python -m adapters.model [MODELS_DIR]`` regenerates the shipped calibration.
"""

from adapters.model._calibration import INSTRUCTIONS, Recipe, build_calibration, shipped_calibration
from adapters.model._default_model import (
    BITS,
    DESC_ACT,
    GROUP_SIZE,
    MARKER,
    MSE,
    SYM,
    convert_gguf,
    default_model_dir,
    gguf_path,
    is_prepared,
    plain_model_dir,
    prepare_default_model,
    quantize,
)
from adapters.model._loading import gptq_settings, load_base_model, module_shapes, resolve_base

__all__ = [
    "BITS",
    "DESC_ACT",
    "GROUP_SIZE",
    "INSTRUCTIONS",
    "MARKER",
    "MSE",
    "SYM",
    "Recipe",
    "build_calibration",
    "convert_gguf",
    "default_model_dir",
    "gguf_path",
    "gptq_settings",
    "is_prepared",
    "load_base_model",
    "module_shapes",
    "plain_model_dir",
    "prepare_default_model",
    "quantize",
    "resolve_base",
    "shipped_calibration",
]
