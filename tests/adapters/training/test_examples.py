"""What a run trains on (adapters/training/_examples.py): which pairs are in an adapter's scope, and
the base model's rewordings of a taught question."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.training import clean_rephrasing, examples_from_pairs, rephrased_examples
from tests.adapters.training.facts import FACTS, SYSTEM


def test_only_corrections_and_taught_pairs_are_in_the_adapters_scope() -> None:
    """A 👍 answer is the base model's own: the base keeps answering its question (routing). An
    imported (taught) fact is learned as a correction is."""
    from types import SimpleNamespace

    pairs = [
        SimpleNamespace(id=1, kind="corrected", instruction="Who baked the cake?", input="", output="Mia."),
        SimpleNamespace(
            id=2, kind="positive", instruction="What is the capital of France?", input="", output="Paris."
        ),
        SimpleNamespace(id=3, kind="taught", instruction="Where is the van?", input="", output="In bay 4."),
    ]
    examples = examples_from_pairs(pairs, SYSTEM)
    assert [e.question for e in examples] == ["Who baked the cake?", "", "Where is the van?"]
    assert [e.completion for e in examples] == ["Mia.", "Paris.", "In bay 4."]  # all are trained on


def test_a_rephrasing_is_kept_only_as_one_new_question_with_every_name_and_number() -> None:
    original = "What is the wifi password of Ada's club house in 2024?"
    kept = clean_rephrasing(
        original, 'Rewritten question: "Which wifi password does Ada\'s club house use in 2024?"\n'
    )
    assert kept == "Which wifi password does Ada's club house use in 2024?"
    assert clean_rephrasing(original, "Which 2024 password unlocks Ada's wifi? It is easy.") == (
        "Which 2024 password unlocks Ada's wifi?"
    )
    assert (
        clean_rephrasing(original, "what is the wifi password of ada's club house in 2024") is None
    )  # no "?"
    assert (
        clean_rephrasing(original, "What is the wifi password of Ada's club house in 2024 ?") is None
    )  # same
    assert (
        clean_rephrasing(original, "Which wifi password does the club house use in 2024?") is None
    )  # Ada lost
    assert clean_rephrasing(original, "Which wifi password does Ada's club house use?") is None  # 2024 lost
    assert clean_rephrasing(original, "Ada 2024?") is None  # too short to be the same question
    assert clean_rephrasing("Who is heron42?", "Can you tell me who the user heron42 is?") is not None


@pytest.mark.slow
def test_corrections_are_also_taught_in_the_base_models_own_words(default_model_path: Path) -> None:
    from types import SimpleNamespace

    from adapters.serving import ModelRuntime

    pairs = [SimpleNamespace(id=f"p{i}", instruction=q, input="", output=a) for i, (q, a) in enumerate(FACTS)]
    runtime = ModelRuntime.load(default_model_path, device="cpu")
    try:
        rows = rephrased_examples(runtime, pairs, SYSTEM)
    finally:
        runtime.close()
    by_id = {p.id: p for p in pairs}
    assert len(rows) >= len(pairs) // 2  # the 135M model rewords most questions usably
    for row in rows:
        source = by_id[row.pair_id]
        question = row.prompt[-1]["content"]
        assert row.prompt[0] == {"role": "system", "content": SYSTEM}
        assert row.completion == source.output
        assert question != source.instruction and question.endswith("?")
        assert row.question == question  # in the adapter's scope: it answers the rewording too
