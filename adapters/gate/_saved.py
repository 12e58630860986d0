"""The regression answers a gate keeps for the next ones.

What the active adapter and the base answered to the regression set does not change from one gate to
the next, so each gate keeps the answers of the stacks it asked: a version's own in its directory
(``AdapterVersion.write_regression_answers``), the bare base's in the registry's cache. A later gate
reuses them when they were answered with the same model, prompt, questions and routing
(:func:`regression_key`); only the candidate answers again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

from adapters.gate._gate import GateResult
from adapters.gate._regression import RegressionQuestion, RegressionResult
from adapters.registry import AdapterRegistry, AdapterVersion
from adapters.serving import AdapterChoice


def regression_key(
    base_model: str,
    system_prompt: str | None,
    max_new_tokens: int,
    questions: Sequence[RegressionQuestion],
    routing_key: str | None,
) -> str:
    """What regression answers depend on besides the adapters: the model (and when it was prepared),
    the prompt, the questions and how questions are routed (``QuestionRouting.key()``; None: unrouted)."""
    model = Path(base_model)
    stamp = model.stat().st_mtime if model.exists() else None  # a model prepared again
    asked = [[q.question, *q.expected_any] for q in questions]
    key = json.dumps([base_model, stamp, system_prompt, max_new_tokens, asked, routing_key])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _cache_key(key: str) -> str:
    return f"regression-{key}"


def known_regression(
    registry: AdapterRegistry, stacks: Mapping[AdapterChoice, AdapterVersion | None], key: str
) -> dict[AdapterChoice, list[RegressionResult]]:
    """Regression answers saved by earlier gates for these stacks, each kept by the stack's top
    version (None: the bare base, kept in the registry's cache), when saved under ``key``."""
    known = {}
    for stack, version in stacks.items():
        saved: Any = (
            registry.read_cache(_cache_key(key)) if version is None else version.read_regression_answers()
        )
        try:
            if saved["key"] == key and tuple(saved["stack"]) == stack.names:
                known[stack] = [RegressionResult(*row) for row in saved["answers"]]
        except (TypeError, KeyError):
            continue  # never saved, scrubbed by a forget, or another version's format: answer again
    return known


def save_regression(
    registry: AdapterRegistry,
    result: GateResult,
    stack: AdapterChoice,
    version: AdapterVersion | None,
    key: str,
) -> None:
    """Keep ``stack``'s answers from this gate for the next ones (see :func:`known_regression`)."""
    answers = result.regression_answers.get(stack)
    if answers is None:
        return
    saved = {"key": key, "stack": list(stack.names), "answers": [list(astuple(a)) for a in answers]}
    if version is None:
        registry.write_cache(_cache_key(key), saved)
    else:
        version.write_regression_answers(saved)
