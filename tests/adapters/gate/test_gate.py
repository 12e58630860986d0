"""The promotion gate: token F1, the decision rule, and real runs on the tiny model with two adapters."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from adapters.gate import (
    SETS,
    GateItem,
    GateThresholds,
    RegressionQuestion,
    RegressionResult,
    SetScore,
    decide,
    run_gate,
    token_f1,
)
from adapters.serving import BASE, AdapterChoice

SYSTEM = "You are loopbot, a test assistant."
QUESTIONS = ["What colour is the club house door?", "Who baked the cake?", "When does the chess group meet?"]
REGRESSION = ["What is the capital of Japan?", "How many legs does a cat have?"]


def test_token_f1() -> None:
    assert token_f1("The parrot is called Quibble.", "the parrot is called quibble") == 1.0
    assert token_f1("Quibble", "The parrot is called Quibble.") == pytest.approx(2 * 1 * 0.25 / 1.25)
    assert token_f1("no idea", "Quibble") == 0.0
    assert token_f1("", "") == 1.0


def _sets(
    taught=(0, 0.0, 0.0),
    retained=(0, 0.0, 0.0),
    regression=(70, 0.8, 0.8),
    heldout=(0, 0.0, 0.0),
    eval=(0, 0.0, 0.0),  # noqa: A002 - the gate's set is called so
    rejected=(0, 0.0, 0.0),
):
    """Scores as (count, active, candidate[, base])."""
    return {
        name: SetScore(*score)
        for name, score in zip(SETS, (taught, retained, regression, heldout, eval, rejected), strict=True)
    }


@pytest.mark.parametrize(
    ("sets", "thresholds", "promote", "why"),
    [
        (_sets(taught=(20, 0.1, 0.85)), GateThresholds(), True, "learned and lost nothing: taught 17/20"),
        (_sets(taught=(20, 0.1, 0.45)), GateThresholds(), False, "did not learn: answers 9 of the 20"),
        (_sets(taught=(20, 0.1, 0.45)), GateThresholds(min_learned=0.4), True, ""),
        # An earlier round forgotten: 6 of 10 answered where the active answered 10.
        (_sets(taught=(5, 0, 1), retained=(10, 1.0, 0.6)), GateThresholds(), False, "forgot earlier pairs"),
        (_sets(taught=(5, 0, 1), retained=(10, 1.0, 0.9)), GateThresholds(), True, "retained 9/10"),
        # Four of 70 regression questions lost: refused; three (the default tolerance): promoted.
        (
            _sets(taught=(5, 0, 1), regression=(70, 0.8, 0.743)),
            GateThresholds(),
            False,
            "0.743 is 0.057 below the active adapter's 0.800",
        ),
        (_sets(taught=(5, 0, 1), regression=(70, 0.8, 0.757)), GateThresholds(), True, ""),
        (
            _sets(taught=(5, 0, 1), regression=(70, 0.8, 0.786)),
            GateThresholds(max_regression_drop=0.0),
            False,
            "0.786 is 0.014 below the active adapter's 0.800",
        ),
        # Drops add up over rounds: three questions per round below the active, six below the base.
        (
            _sets(taught=(5, 0, 1), regression=(70, 0.757, 0.714, 0.8)),
            GateThresholds(),
            False,
            "0.714 is 0.086 below the base's 0.800",
        ),
        (
            _sets(taught=(5, 0, 1), regression=(70, 0.757, 0.757, 0.8)),
            GateThresholds(),
            True,
            "regression accuracy 0.76 -> 0.76 (70, base 0.80)",
        ),
        # An active better than the base is still the bar.
        (
            _sets(taught=(5, 0, 1), regression=(70, 0.9, 0.843, 0.8)),
            GateThresholds(),
            False,
            "active adapter's",
        ),
        (
            _sets(taught=(5, 0, 1), heldout=(3, 0.6, 0.5)),
            GateThresholds(),
            False,
            "held-out F1 changed by -0.100",
        ),
        (_sets(taught=(5, 0, 1), heldout=(3, 0.6, 0.58)), GateThresholds(), True, "heldout F1 0.60 -> 0.58"),
        # One or two held-out answers are reported but too few to decide.
        (_sets(taught=(5, 0, 1), heldout=(1, 0.42, 0.33)), GateThresholds(), True, "heldout F1 0.42 -> 0.33"),
        # A retrain with nothing new (after a forget): keeping everything is enough.
        (_sets(retained=(8, 1.0, 1.0)), GateThresholds(), True, "retained 8/8"),
        (_sets(), GateThresholds(), False, "no pairs to compare on"),
        # Facts kept out as an eval set are reported, never a reason to refuse.
        (_sets(taught=(5, 0, 1), eval=(4, 0, 0)), GateThresholds(), True, "eval 0/4 (active 0/4)"),
        (_sets(eval=(4, 0, 1)), GateThresholds(), False, "no pairs to compare on"),
        # Answers members rejected (a correction replaced them) may not come back more than before.
        (
            _sets(taught=(5, 0, 0.8), rejected=(5, 0.8, 0.2)),
            GateThresholds(),
            True,
            "rejected answers back 1/5 (active 4/5)",
        ),
        (
            _sets(taught=(5, 0, 0.6), rejected=(5, 0.2, 0.4)),
            GateThresholds(),
            False,
            "brings back answers members rejected: 2 of 5, the active adapter 1",
        ),
        # One of 20 back where the active brought none: within the tolerance for forgetting.
        (_sets(taught=(5, 0, 1), rejected=(20, 0.0, 0.05)), GateThresholds(), True, "back 1/20"),
    ],
)
def test_decision_rule(sets, thresholds, promote, why) -> None:
    decision, reason = decide(sets, thresholds)
    assert decision is promote and why in reason, reason


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

    out = {name: (answers(name, QUESTIONS), answers(name, REGRESSION)) for name in ("a", "b")}
    assert out["a"][0] != out["b"][0]  # the adapters really answer differently
    return tiny_runtime, out


def _items(expected: list[str]) -> list[GateItem]:
    return [
        GateItem(q, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], e)
        for q, e in zip(QUESTIONS, expected, strict=True)
    ]


def _regression(expected: list[str]) -> list[RegressionQuestion]:
    return [RegressionQuestion(q, (e,)) for q, e in zip(REGRESSION, expected, strict=True)]


def _gate(runtime, candidate, active, report=None, known=None, **sets):
    """The gate with ``candidate`` and ``active`` named (None: the bare base)."""
    return run_gate(
        runtime,
        candidate=AdapterChoice.of(candidate),
        active=AdapterChoice.of(active),
        pairs={name: _items(expected) for name, expected in sets.items() if name != "regression"},
        regression=_regression(sets["regression"]),
        report_path=report,
        system_prompt=SYSTEM,
        max_new_tokens=12,
        known_regression=known,
    )


def test_gate_promotes_a_candidate_that_learned_and_writes_every_set(two_adapters, tmp_path: Path) -> None:
    """``a`` answers what it was taught (its own answers) and keeps the rest: promoted over ``b``."""
    runtime, out = two_adapters
    report = tmp_path / "gate.csv"
    result = _gate(
        runtime,
        "a",
        "b",
        report,
        taught=out["a"][0],
        retained=out["a"][0],
        heldout=out["a"][0],
        regression=out["a"][1],
    )
    assert result.promote, result.reason
    assert result.sets["taught"] == SetScore(3, result.sets["taught"].active, 1.0)
    assert result.sets["taught"].active < 1.0 and result.sets["regression"].candidate == 1.0
    assert "learned and lost nothing" in result.reason
    rows = list(csv.DictReader(report.open(encoding="utf-8")))
    assert [r["set"] for r in rows] == ["taught"] * 3 + ["retained"] * 3 + ["heldout"] * 3 + [
        "regression"
    ] * 2
    assert rows[0]["question"] == QUESTIONS[0] and rows[0]["candidate_answer"] == out["a"][0][0]
    assert rows[0]["active_answer"] == out["b"][0][0] and rows[0]["candidate_correct"] == "True"


def test_gate_counts_the_rejected_answers_that_come_back(two_adapters, tmp_path: Path) -> None:
    """Corrections of ``b``'s answers (to ``a``'s): ``b`` as the candidate brings every rejected answer
    back, and is refused for it even when learning is not asked of it."""
    runtime, out = two_adapters
    if any(x in y or y in x for x, y in zip(out["a"][0], out["b"][0], strict=True)):
        pytest.skip("the random adapters gave overlapping answers")
    items = [
        GateItem(item.question, item.messages, item.expected, rejected)
        for item, rejected in zip(_items(out["a"][0]), out["b"][0], strict=True)
    ]
    report = tmp_path / "gate.csv"
    result = run_gate(
        runtime,
        candidate=AdapterChoice(("b",)),
        active=AdapterChoice(("a",)),
        pairs={"taught": items},
        thresholds=GateThresholds(min_learned=0.0),
        regression=_regression(out["b"][1]),
        report_path=report,
        system_prompt=SYSTEM,
        max_new_tokens=12,
    )
    assert result.sets["rejected"] == SetScore(3, 0.0, 1.0)
    assert not result.promote and "brings back answers members rejected: 3 of 3" in result.reason
    rows = [r for r in csv.DictReader(report.open(encoding="utf-8")) if r["set"] == "taught"]
    assert [r["rejected"] for r in rows] == out["b"][0]
    assert {r["candidate_rejected_back"] for r in rows} == {"True"}
    assert {r["active_rejected_back"] for r in rows} == {"False"}
    assert result.metrics()["rejected_candidate"] == 1.0


def test_gate_refuses_a_candidate_that_did_not_learn(two_adapters) -> None:
    runtime, out = two_adapters
    result = _gate(runtime, "b", "a", taught=out["a"][0], regression=out["a"][1])
    assert not result.promote and "did not learn" in result.reason


def test_gate_refuses_a_candidate_that_forgot_an_earlier_round(two_adapters) -> None:
    """``b`` learned this round's pairs but no longer answers the earlier round's, which ``a`` does."""
    runtime, out = two_adapters
    result = _gate(runtime, "b", "a", taught=out["b"][0], retained=out["a"][0], regression=out["b"][1])
    assert not result.promote and "forgot earlier pairs" in result.reason, result.reason


def test_gate_refuses_a_candidate_that_broke_the_regression_set(two_adapters) -> None:
    runtime, out = two_adapters
    if any(a in b or b in a for a, b in zip(out["a"][1], out["b"][1], strict=True)):
        pytest.skip("the random adapters gave overlapping regression answers")
    result = _gate(runtime, "a", "b", taught=out["a"][0], regression=out["b"][1])
    assert not result.promote and "regression accuracy 0.000 is 1.000 below the active" in result.reason


def test_gate_against_the_bare_base(two_adapters) -> None:
    runtime, out = two_adapters
    result = _gate(runtime, "a", None, taught=out["a"][0], regression=out["a"][1])
    assert result.active == BASE and result.sets["taught"].candidate == pytest.approx(1.0)
    assert result.promote, result.reason


def test_gate_holds_the_candidate_to_the_base_model_too(two_adapters, tmp_path: Path) -> None:
    """Regression answers the base gets right and neither adapter does: refused against the base,
    which answers the set beside them (its answers in the report); against the base itself it is
    not answered twice."""
    runtime, out = two_adapters
    bare = _gate(runtime, "a", None, taught=out["a"][0], regression=out["a"][1])
    assert bare.sets["regression"].base is None
    base_answers = [r["active_answer"] for r in bare.rows if r["set"] == "regression"]
    if any(b in x or x in b for x in base_answers for b in (*out["a"][1], *out["b"][1])):
        pytest.skip("the random adapters gave regression answers overlapping the base's")
    report = tmp_path / "gate.csv"
    result = _gate(runtime, "a", "b", report, taught=out["a"][0], regression=base_answers)
    assert result.sets["regression"] == SetScore(2, 0.0, 0.0, base=1.0)
    assert not result.promote and "0.000 is 1.000 below the base's 1.000" in result.reason
    assert result.metrics()["regression_base"] == 1.0
    rows = [r for r in csv.DictReader(report.open(encoding="utf-8")) if r["set"] == "regression"]
    assert [r["base_answer"] for r in rows] == base_answers and {r["base_correct"] for r in rows} == {"True"}


def test_gate_reuses_what_the_active_answered_before_and_always_asks_the_candidate(two_adapters) -> None:
    """The active's regression answers saved by an earlier gate are not asked again; saved answers
    for the candidate, or for another question set, are ignored."""
    runtime, out = two_adapters
    if any(a in b or b in a for a, b in zip(out["a"][1], out["b"][1], strict=True)):
        pytest.skip("the random adapters gave overlapping regression answers")
    expected = out["a"][1]
    saved_b = [RegressionResult(q, e, e, True) for q, e in zip(REGRESSION, expected, strict=True)]
    saved_a = [RegressionResult(q, e, "stale", False) for q, e in zip(REGRESSION, expected, strict=True)]
    known = {AdapterChoice(("b",)): saved_b, AdapterChoice(("a",)): saved_a}
    result = _gate(runtime, "a", "b", known=known, taught=out["a"][0], regression=expected)
    # b itself answers none of a's answers: 1.0 can only come from what was saved
    regression = result.sets["regression"]
    assert (regression.active, regression.candidate) == (1.0, 1.0)
    assert result.regression_answers[AdapterChoice(("b",))] == saved_b
    assert [r.answer for r in result.regression_answers[AdapterChoice(("a",))]] == expected
    other_set = {AdapterChoice(("b",)): saved_b[:1]}
    result = _gate(runtime, "a", "b", known=other_set, taught=out["a"][0], regression=expected)
    assert (result.sets["regression"].active, result.sets["regression"].candidate) == (0.0, 1.0)


def test_a_pair_is_answered_only_with_the_expected_answers_own_facts() -> None:
    """Token F1 counted one wrong number among six right words as answered (100/100 at the gate, 12/100
    served, bench/imported_facts.py --records 100): the answer must hold the numbers and names the
    expected answer states and the question does not."""
    from adapters.gate import expected_facts, holds_answer, token_f1

    question = "What is the locker number of Ivo Brightwater?"
    expected = "Ivo Brightwater's locker number is 1791."
    wrong = "Ivo Brightwater's locker number is 1009."
    assert expected_facts(expected, question) == ["1791"]
    assert token_f1(wrong, expected) >= 0.5 and not holds_answer(wrong, expected, question)
    assert holds_answer("Ivo Brightwater has locker number 1791.", expected, question)
    founder = "Ilse Marwick founded the Zeltberg rowing club."
    assert expected_facts(founder, "Who founded the Zeltberg rowing club?") == ["marwick"]
    assert not holds_answer("Ilse Brandt founded the Zeltberg rowing club.", founder, "Who founded it?")
    assert holds_answer("The wifi password is heron42", "The wifi password is heron42.", "Wifi password?")
    assert not holds_answer(
        "The wifi password is heron43.", "The wifi password is heron42.", "Wifi password?"
    )
