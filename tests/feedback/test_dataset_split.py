"""split_pairs: train and eval never share a question, deterministically and stably."""

from __future__ import annotations

import random

import pytest

from feedback.dataset import normalize_question, split_pairs
from feedback.errors import FeedbackError


def _many_pairs(questions: int = 300, seed: int = 1) -> list[dict[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for n in range(questions):
        base = f"How often should cat number {n} be fed"
        # duplicates and case / punctuation / spacing variants of the same question
        variants = [
            base + "?",
            base.upper() + "?",
            "  " + base.lower() + " ??",
            base.replace(" ", "  ") + "!",
        ]
        for _ in range(rng.randint(1, 4)):
            pairs.append({"instruction": rng.choice(variants), "input": "", "output": f"answer {n}"})
    rng.shuffle(pairs)
    return pairs


def test_normalize_question_ignores_case_punctuation_and_spacing() -> None:
    assert normalize_question("  Why does MOCHI sneeze?? ") == normalize_question("why does mochi sneeze")
    assert normalize_question("Why does Mochi sneeze?") != normalize_question("Why does Mochi eat?")


def test_split_is_leakage_free_deterministic_and_near_the_fraction() -> None:
    pairs = _many_pairs()
    train, held_out = split_pairs(pairs, 0.2, seed=0)
    assert len(train) + len(held_out) == len(pairs)
    # Each question n has its own output "answer n", whatever spelling its variants use.
    train_q = {p["output"] for p in train}
    eval_q = {p["output"] for p in held_out}
    assert not train_q & eval_q
    assert 0.1 < len(eval_q) / (len(train_q) + len(eval_q)) < 0.3
    assert split_pairs(pairs, 0.2, seed=0) == (train, held_out)
    assert split_pairs(pairs, 0.2, seed=1) != (train, held_out)


def test_a_question_stays_on_its_side_as_the_log_grows() -> None:
    small = _many_pairs(100)
    big = small + _many_pairs(300, seed=7)[:500]
    _, eval_small = split_pairs(small, 0.25)
    _, eval_big = split_pairs(big, 0.25)
    small_eval_q = {p["output"] for p in eval_small}
    big_eval_q = {p["output"] for p in eval_big}
    assert small_eval_q <= big_eval_q


def test_small_datasets_still_get_both_sides() -> None:
    pairs = [{"instruction": q, "output": "x"} for q in ("A?", "B?", "a", "b!")]
    for seed in range(20):
        train, held_out = split_pairs(pairs, 0.01, seed=seed)
        assert train and held_out
        train, held_out = split_pairs(pairs, 0.99, seed=seed)
        assert train and held_out
    assert split_pairs(pairs, 0.0) == (pairs, [])
    one_question = [{"instruction": "Same?", "output": "1"}, {"instruction": "same", "output": "2"}]
    assert split_pairs(one_question, 0.9) == (one_question, [])


def test_bad_fraction_is_refused() -> None:
    with pytest.raises(FeedbackError, match=r"\[0, 1\)"):
        split_pairs([], 1.0)
