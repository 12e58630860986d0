"""The promotion gate: token F1, the decision rule, and real runs on the tiny model with two adapters."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from adapters.evaluation import RegressionQuestion
from adapters.gate import GateThresholds, HeldOutItem, decide, run_gate, token_f1

SYSTEM = "You are loopbot, a test assistant."
HELD_OUT = ["What colour is the club house door?", "Who baked the cake?", "When does the chess group meet?"]
REGRESSION = ["What is the capital of Japan?", "How many legs does a cat have?"]


def test_token_f1() -> None:
    assert token_f1("The parrot is called Quibble.", "the parrot is called quibble") == 1.0
    assert token_f1("Quibble", "The parrot is called Quibble.") == pytest.approx(2 * 1 * 0.25 / 1.25)
    assert token_f1("no idea", "Quibble") == 0.0
    assert token_f1("", "") == 1.0


@pytest.mark.parametrize(
    ("gain", "reg_change", "count", "thresholds", "promote", "why"),
    [
        (0.10, 0.0, 5, GateThresholds(), True, "held-out F1 +0.100"),
        (0.0, 0.0, 5, GateThresholds(), False, "not above"),  # equal is not better
        (-0.2, 0.5, 5, GateThresholds(), False, "not above"),
        (0.04, 0.0, 5, GateThresholds(min_gain=0.05), False, "not above the required 0.050"),
        (0.05, 0.0, 5, GateThresholds(min_gain=0.05), True, ""),
        (0.3, -0.1, 5, GateThresholds(), False, "regression accuracy changed by -0.100"),
        (0.3, -0.1, 5, GateThresholds(max_regression_drop=0.1), True, ""),
        (0.3, 0.0, 0, GateThresholds(), False, "no held-out pairs"),
    ],
)
def test_decision_rule(gain, reg_change, count, thresholds, promote, why) -> None:
    decision, reason = decide(gain, reg_change, count, thresholds)
    assert decision is promote and why in reason


@pytest.fixture
def two_adapters(tiny_runtime, tiny_model_dir: Path, make_lora_adapter):
    """The tiny runtime with adapters ``a`` and ``b`` loaded and each one's greedy answers."""
    tiny_runtime.load_adapter("a", make_lora_adapter(tiny_model_dir, seed=11))
    tiny_runtime.load_adapter("b", make_lora_adapter(tiny_model_dir, seed=12))

    def answers(adapter: str, questions: list[str]) -> list[str]:
        return [
            tiny_runtime.generate(
                [{"role": "user", "content": q}],
                adapter=adapter,
                system_prompt=SYSTEM,
                temperature=0.0,
                max_new_tokens=12,
            ).text
            for q in questions
        ]

    out = {name: (answers(name, HELD_OUT), answers(name, REGRESSION)) for name in ("a", "b")}
    assert out["a"][0] != out["b"][0]  # the adapters really answer differently
    return tiny_runtime, out


def _items(expected: list[str]) -> list[HeldOutItem]:
    return [
        HeldOutItem(q, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], e)
        for q, e in zip(HELD_OUT, expected, strict=True)
    ]


def _regression(expected: list[str]) -> list[RegressionQuestion]:
    return [RegressionQuestion(q, (e,)) for q, e in zip(REGRESSION, expected, strict=True)]


def test_gate_promotes_the_better_candidate_and_writes_a_report(two_adapters, tmp_path: Path) -> None:
    runtime, out = two_adapters
    report = tmp_path / "gate.csv"
    result = run_gate(
        runtime,
        candidate="a",
        active="b",
        heldout=_items(out["a"][0]),
        regression=_regression(out["a"][1]),
        report_path=report,
        system_prompt=SYSTEM,
        max_new_tokens=12,
    )
    assert result.promote, result.reason
    assert result.heldout_candidate == pytest.approx(1.0) and result.heldout_active < 1.0
    assert result.regression_candidate == 1.0
    rows = list(csv.DictReader(report.open(encoding="utf-8")))
    assert [r["set"] for r in rows] == ["heldout"] * 3 + ["regression"] * 2
    assert rows[0]["question"] == HELD_OUT[0] and rows[0]["candidate_answer"] == out["a"][0][0]
    assert rows[0]["active_answer"] == out["b"][0][0] and rows[0]["candidate_correct"] == "True"


def test_gate_rejects_a_worse_candidate(two_adapters) -> None:
    runtime, out = two_adapters
    result = run_gate(
        runtime,
        candidate="b",
        active="a",
        heldout=_items(out["a"][0]),
        regression=_regression(out["a"][1]),
        system_prompt=SYSTEM,
        max_new_tokens=12,
    )
    assert not result.promote and "held-out F1" in result.reason


def test_gate_rejects_a_regression(two_adapters) -> None:
    """Better on the held-out pairs but worse on the regression set: not promoted."""
    runtime, out = two_adapters
    if any(a in b or b in a for a, b in zip(out["a"][1], out["b"][1], strict=True)):
        pytest.skip("the random adapters gave overlapping regression answers")
    result = run_gate(
        runtime,
        candidate="a",
        active="b",
        heldout=_items(out["a"][0]),
        regression=_regression(out["b"][1]),
        system_prompt=SYSTEM,
        max_new_tokens=12,
    )
    assert not result.promote and "regression accuracy changed by -1.000" in result.reason


def test_gate_against_the_bare_base(two_adapters) -> None:
    runtime, out = two_adapters
    result = run_gate(
        runtime,
        candidate="a",
        active=None,
        heldout=_items(out["a"][0]),
        regression=_regression(out["a"][1]),
        system_prompt=SYSTEM,
        max_new_tokens=12,
    )
    assert result.active is None and result.heldout_candidate == pytest.approx(1.0)
