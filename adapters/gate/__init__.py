"""The promotion gate: a candidate adapter is promoted only if it learned what it was taught and lost
nothing its users relied on.

- :mod:`~adapters.gate._rule`: the rule (:func:`decide`, the thresholds) and how an answer is scored
- :mod:`~adapters.gate._gate`: :func:`run_gate`, both adapters answering every set, and the CSV report
- :mod:`~adapters.gate._regression`: the fixed regression question set, answered and graded
- :mod:`~adapters.gate._saved`: regression answers kept from one gate for the next
"""

from adapters.gate._gate import REPORT_COLUMNS, GateItem, GateResult, run_gate, write_report
from adapters.gate._regression import (
    Divergence,
    RegressionQuestion,
    RegressionResult,
    accuracy,
    core_regression_questions,
    divergence_from_reference,
    is_correct,
    load_regression_questions,
    regression_conversations,
    run_regression,
    write_regression_csv,
)
from adapters.gate._rule import (
    CORRECT_F1,
    PAIR_SETS,
    SETS,
    GateThresholds,
    SetScore,
    brings_back,
    decide,
    expected_facts,
    holds_answer,
    score_lines,
    token_f1,
)
from adapters.gate._saved import known_regression, regression_key, save_regression

__all__ = [
    "CORRECT_F1",
    "PAIR_SETS",
    "REPORT_COLUMNS",
    "SETS",
    "Divergence",
    "GateItem",
    "GateResult",
    "GateThresholds",
    "RegressionQuestion",
    "RegressionResult",
    "SetScore",
    "accuracy",
    "brings_back",
    "core_regression_questions",
    "decide",
    "divergence_from_reference",
    "expected_facts",
    "holds_answer",
    "is_correct",
    "known_regression",
    "load_regression_questions",
    "regression_conversations",
    "regression_key",
    "run_gate",
    "run_regression",
    "save_regression",
    "score_lines",
    "token_f1",
    "write_regression_csv",
    "write_report",
]
