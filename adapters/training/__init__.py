"""Training: a LoRA trained on feedback pairs in its own process and published through the registry.

- :mod:`~adapters.training._examples`: what a run trains on (pairs, anchors, rephrasings, preferences)
- :mod:`~adapters.training._trainer`: :func:`train_adapter`, the run's options, the child process, publishing
- :mod:`~adapters.training._worker` (the process, ``python -m adapters.training._worker``) and
  :mod:`~adapters.training._peft` (the model made ready: loaded through :mod:`adapters.model`, LoRA on top)
"""

from adapters.training._examples import (
    TAUGHT_KINDS,
    PreferenceExample,
    TrainingExample,
    anchor_examples,
    anchor_questions,
    cached_anchor_examples,
    clean_rephrasing,
    data_hash,
    examples_from_pairs,
    preference_examples,
    rephrased_examples,
)
from adapters.training._peft import CHECKPOINT_FROM_TOKENS, TARGET_MODULES
from adapters.training._trainer import (
    PREFERENCE_METHODS,
    NotEnoughPairs,
    TrainingFailed,
    TrainingOptions,
    train_adapter,
)

__all__ = [
    "CHECKPOINT_FROM_TOKENS",
    "PREFERENCE_METHODS",
    "TARGET_MODULES",
    "TAUGHT_KINDS",
    "NotEnoughPairs",
    "PreferenceExample",
    "TrainingExample",
    "TrainingFailed",
    "TrainingOptions",
    "anchor_examples",
    "anchor_questions",
    "cached_anchor_examples",
    "clean_rephrasing",
    "data_hash",
    "examples_from_pairs",
    "preference_examples",
    "rephrased_examples",
    "train_adapter",
]
