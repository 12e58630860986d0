"""The regression answers a gate keeps for the next ones.

What the active adapter and the base answered to the regression set does not change from one gate to
the next, so each gate keeps the answers of the stacks it asked: a version's own in its directory
(``AdapterVersion.write_regression_answers``), the bare base's in the registry's cache and beside the
model (``BaseModelCache``: every server and data dir serving that model shares them). A later gate
reuses them when they were answered with the same model, prompt, questions and routing
(:func:`regression_key`; the bare base's under a key without routing, which does not change them);
only the candidate answers again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import astuple
from typing import Any

from adapters.gate._gate import GateResult
from adapters.gate._regression import RegressionQuestion, RegressionResult
from adapters.registry import AdapterRegistry, AdapterVersion, BaseModelCache, model_stamp
from adapters.serving import AdapterChoice


def regression_key(
    base_model: str,
    system_prompt: str | None,
    max_new_tokens: int,
    questions: Sequence[RegressionQuestion],
    routing_key: str | None,
) -> str:
    """What regression answers depend on besides the adapters: the model (and when it was prepared),
    the prompt, the questions and how questions are routed (``QuestionRouting.key()``; None: the bare
    base's answers, which routing does not change)."""
    asked = [[q.question, *q.expected_any] for q in questions]
    key = json.dumps([base_model, model_stamp(base_model), system_prompt, max_new_tokens, asked, routing_key])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _cache_key(key: str) -> str:
    return f"regression-{key}"


def known_regression(
    registry: AdapterRegistry,
    stacks: Mapping[AdapterChoice, AdapterVersion | None],
    key: str,
    base_key: str,
    base_model: str,
) -> dict[AdapterChoice, list[RegressionResult]]:
    """Regression answers saved by earlier gates for these stacks: under ``key`` by the stack's top
    version, or for the bare base (None) under ``base_key`` in the registry's cache, else the model's."""
    known = {}
    for stack, version in stacks.items():
        kept: list[Any]
        if version is None:  # the registry's own first
            kept = [
                registry.read_cache(_cache_key(base_key)),
                BaseModelCache(base_model).read(_cache_key(base_key)),
            ]
        else:
            kept = [version.read_regression_answers()]  # None: never saved, or scrubbed by a forget
        wanted = base_key if version is None else key
        for saved in kept:
            try:
                if saved["key"] == wanted and tuple(saved["stack"]) == stack.names:
                    known[stack] = [RegressionResult(*row) for row in saved["answers"]]
                    break
            except (TypeError, KeyError):
                continue  # absent, or another version's format: answer again
    return known


def save_regression(
    registry: AdapterRegistry,
    result: GateResult,
    stack: AdapterChoice,
    version: AdapterVersion | None,
    key: str,
    base_model: str = "",
) -> None:
    """Keep ``stack``'s answers from this gate for the next ones (see :func:`known_regression`); the bare
    base's (``version`` None) in the registry's cache and, given ``base_model``, beside the model."""
    answers = result.regression_answers.get(stack)
    if answers is None:
        return
    saved = {"key": key, "stack": list(stack.names), "answers": [list(astuple(a)) for a in answers]}
    if version is None:
        registry.write_cache(_cache_key(key), saved)
        if base_model:
            BaseModelCache(base_model).write(_cache_key(key), saved)
    else:
        version.write_regression_answers(saved)
