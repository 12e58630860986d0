"""Adapter routing: a version answers only questions close to one it was trained on; the answer
service, the regression run and the gate see what members would get. Real parts: the tiny GPTQ
runtime, random LoRA adapters, the packaged MiniLM embedder."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from adapters.gate import GateItem, RegressionQuestion, run_gate, run_regression
from adapters.registry import read_scope, write_scope
from adapters.serving import BASE, AdapterChoice, QuestionRouting, routed

SCOPE_FILE = "questions.json"  # a version's scope, as the registry lays it out
SYSTEM = "You are loopbot, a test assistant."
TAUGHT = ["What colour is the club house door?", "Who baked the cake for the spring fair?"]
OTHER_WORDS = "Which colour is the door of the clubhouse?"
GENERAL = ["What is the capital of Japan?", "How many legs does a spider have?"]


def _routing(embeddings, min_similarity: float = 0.5) -> QuestionRouting:
    return QuestionRouting(embeddings.embed_documents, embeddings.embed_query, min_similarity=min_similarity)


@pytest.fixture
def scoped(tiny_runtime, tiny_model_dir: Path, make_lora_adapter, tmp_path: Path):
    """Adapter ``a`` (its scope: TAUGHT[0]), ``b`` (TAUGHT[1]) and ``old`` (no scope: trained before
    routing), loaded on the tiny runtime from copies of their directories."""
    for name, seed, scope in (("a", 21, TAUGHT[:1]), ("b", 22, TAUGHT[1:]), ("old", 23, None)):
        directory = tmp_path / name
        shutil.copytree(make_lora_adapter(tiny_model_dir, seed=seed), directory)
        if scope is not None:
            write_scope(directory, scope)
        tiny_runtime.load_adapter(name, directory)
    return tiny_runtime


def test_an_adapter_answers_only_what_it_was_taught_and_its_rewordings(scoped, packaged_embeddings) -> None:
    routing = _routing(packaged_embeddings)
    assert routing.route(scoped, AdapterChoice(("a",)), TAUGHT[0]) == AdapterChoice(("a",))
    assert routing.route(scoped, AdapterChoice(("a",)), OTHER_WORDS) == AdapterChoice(("a",))
    assert [routing.route(scoped, AdapterChoice(("a",)), q) for q in (*GENERAL, TAUGHT[1])] == [
        BASE,
        BASE,
        BASE,
    ]
    assert routing.route(scoped, AdapterChoice(("old",)), GENERAL[0]) == AdapterChoice(
        ("old",)
    )  # no scope: every question, as before
    assert routing.route(scoped, BASE, TAUGHT[0]) == BASE
    # 0 turns routing off; a threshold above every similarity leaves only the base.
    assert _routing(packaged_embeddings, 0.0).route(
        scoped, AdapterChoice(("a",)), GENERAL[0]
    ) == AdapterChoice(("a",))
    assert _routing(packaged_embeddings, 1.0).route(scoped, AdapterChoice(("a",)), OTHER_WORDS) == BASE


def test_a_stack_keeps_the_layers_whose_scope_covers_the_question(scoped, packaged_embeddings) -> None:
    """A member's adapter ``b`` over the guild's ``a``: her question gets both, the guild's question
    the guild's alone, anything else the base."""
    routing = _routing(packaged_embeddings)
    assert routing.route(scoped, AdapterChoice(("a", "b")), TAUGHT[1]) == AdapterChoice(("a", "b"))
    assert routing.route(scoped, AdapterChoice(("a", "b")), TAUGHT[0]) == AdapterChoice(("a",))
    assert routing.route(scoped, AdapterChoice(("a", "b")), GENERAL[0]) == BASE


def test_a_rewritten_or_deleted_scope_is_read_again(scoped, packaged_embeddings) -> None:
    routing = _routing(packaged_embeddings)
    directory = scoped.adapter_path("a")
    assert routing.route(scoped, AdapterChoice(("a",)), GENERAL[0]) == BASE
    write_scope(directory, [GENERAL[0]])
    assert (
        routing.route(scoped, AdapterChoice(("a",)), GENERAL[0]) == AdapterChoice(("a",))
        and routing.route(scoped, AdapterChoice(("a",)), TAUGHT[0]) == BASE
    )
    (directory / SCOPE_FILE).unlink()  # a forget scrubbed it (the version is not served any more)
    assert read_scope(directory) is None and routing.route(
        scoped, AdapterChoice(("a",)), TAUGHT[0]
    ) == AdapterChoice(("a",))


def test_a_scope_keeps_each_question_once_and_inherits_its_parents(tmp_path: Path) -> None:
    parent, child = tmp_path / "v1", tmp_path / "v2"
    parent.mkdir(), child.mkdir()
    assert write_scope(parent, ["Who baked the cake?", " ", "Who baked the cake?"]) == ["Who baked the cake?"]
    assert write_scope(child, [("Where is the club?", "By the river.")], parent) == [
        "Who baked the cake?",
        "Where is the club?",
    ]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / SCOPE_FILE).write_text("{not json", encoding="utf-8")
    assert read_scope(tmp_path / "bad") is None  # unreadable: it answers everything, never nothing


def test_a_taught_fact_does_not_answer_the_same_question_about_something_else(
    tmp_path: Path, packaged_embeddings
) -> None:
    """Taught the club house's wifi password and the 2023 contest's winner: questions of the same
    shape about another place, year or club are not the adapter's (they were, by closeness alone),
    while the taught questions in other words still are."""
    from knowledge.quoting import fact_answers

    write_scope(
        tmp_path,
        [
            ("What is the wifi password of the club house?", "The wifi password is heron42."),
            ("Who won the 2023 longest whisker contest?", "A Maine Coon named Fennimore won it."),
            ("Who is the treasurer of the Whisker Club?", "The treasurer is Odile Brandt."),
        ],
    )
    routing = QuestionRouting(
        packaged_embeddings.embed_documents, packaged_embeddings.embed_query, about=fact_answers
    )
    closeness_only = _routing(packaged_embeddings)
    near_misses = [
        "What is the wifi password of the library?",
        "Who won the 2024 longest whisker contest?",
        "Who is the treasurer of the Bicycle Club?",
    ]
    assert all(closeness_only.covers(tmp_path, q) for q in near_misses)  # what members got before
    assert not any(routing.covers(tmp_path, q) for q in near_misses)
    for taught in (
        "What is the wifi password of the club house?",
        "Which password gets me on the club house wifi?",
        "who won the 2023 longest whisker contest",
    ):
        assert routing.covers(tmp_path, taught), taught
    assert "about" in routing.key() and "about" not in closeness_only.key()  # cached answers differ


def test_a_scope_written_before_answers_were_kept_still_routes(tmp_path: Path, packaged_embeddings) -> None:
    from knowledge.quoting import fact_answers

    (tmp_path / SCOPE_FILE).write_text(
        '{"questions": ["What colour is the club house door?"]}', encoding="utf-8"
    )
    routing = QuestionRouting(
        packaged_embeddings.embed_documents, packaged_embeddings.embed_query, about=fact_answers
    )
    assert read_scope(tmp_path) == ["What colour is the club house door?"]
    assert routing.covers(tmp_path, "What colour is the club house door?")
    assert not routing.covers(tmp_path, "What colour is the library door?")


def test_the_answer_service_and_the_regression_run_route(scoped, packaged_embeddings) -> None:
    from knowledge.chain import AnswerService

    scoped.set_active_adapter("a")
    route = routed(scoped, _routing(packaged_embeddings))
    service = AnswerService(None, scoped, route=route)
    assert service.answer(TAUGHT[0], user_id="1", guild_id=None).adapter == "a"
    assert service.answer(GENERAL[0], user_id="1", guild_id=None).adapter is None
    unrouted = AnswerService(None, scoped)
    assert unrouted.answer(GENERAL[0], user_id="1", guild_id=None).adapter == "a"
    questions = [RegressionQuestion(q, ("x",)) for q in (TAUGHT[0], *GENERAL)]
    results = run_regression(scoped, questions=questions, system_prompt=SYSTEM, max_new_tokens=4, route=route)
    assert [r.adapter for r in results] == ["a", None, None]


def test_the_gate_judges_the_candidate_as_it_will_be_served(
    scoped, packaged_embeddings, tmp_path: Path
) -> None:
    """``a`` answers general questions unlike the base. Unrouted, that costs it the regression set;
    routed, the base answers them (asked once for both), and ``a`` is promoted on what it learned."""

    def answer(adapter: str | None, question: str) -> str:
        messages = [{"role": "user", "content": question}]
        return scoped.generate(
            messages, adapter=adapter, system_prompt=SYSTEM, temperature=0.0, max_new_tokens=12
        ).text

    base_general = [answer(None, q) for q in GENERAL]
    if any(answer("a", q) == b for q, b in zip(GENERAL, base_general, strict=True)):
        pytest.skip("the random adapter answered a general question as the base does")
    taught = [
        GateItem(TAUGHT[0], [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TAUGHT[0]}],
                 answer("a", TAUGHT[0]))
    ]  # fmt: skip
    regression = [RegressionQuestion(q, (b,)) for q, b in zip(GENERAL, base_general, strict=True)]

    def gate(route=None, report=None):
        return run_gate(
            scoped, candidate=AdapterChoice(("a",)), active=BASE, pairs={"taught": taught}, regression=regression,
            system_prompt=SYSTEM, max_new_tokens=12, route=route, report_path=report,
        )  # fmt: skip

    unrouted = gate()
    assert not unrouted.promote and "regression accuracy 0.000 is 1.000 below" in unrouted.reason
    report = tmp_path / "gate.csv"
    result = gate(routed(scoped, _routing(packaged_embeddings)), report)
    assert result.promote, result.reason
    assert (
        result.regression_answers[AdapterChoice(("a",))] == result.regression_answers[BASE]
    )  # the base's, asked once
    rows = list(csv.DictReader(report.open(encoding="utf-8")))
    assert [(r["set"], r["candidate_served"]) for r in rows] == [
        ("taught", "a"),
        ("regression", "base"),
        ("regression", "base"),
    ]


def test_the_bots_answer_service_embeds_a_question_once(scoped, packaged_embeddings, tmp_path: Path) -> None:
    """Retrieval and routing share the knowledge base's cached query embedding."""
    import chromadb

    from bot.settings import Settings
    from bot.wiring import build_answer_service
    from knowledge.store import KnowledgeBase
    from knowledge.types import Chunk

    class Counting:
        def __init__(self, inner) -> None:
            self.inner, self.queries = inner, []
            self.model_name = inner.model_name

        def embed_query(self, text: str):
            self.queries.append(text)
            return self.inner.embed_query(text)

        def embed_documents(self, texts: list[str]):
            return self.inner.embed_documents(texts)

    embeddings = Counting(packaged_embeddings)
    kb = KnowledgeBase(
        chromadb.PersistentClient(str(tmp_path / "chroma")), embeddings, lexical_path=tmp_path / "l.db"
    )
    kb.add(
        [
            Chunk(
                id="p1",
                text="The club house door is teal.",
                source="faq.md",
                scope="community",
                guild_id="100",
            )
        ]
    )
    try:
        scoped.set_active_adapter("a")
        service = build_answer_service(Settings(data_dir=tmp_path), kb=kb, runtime=scoped)
        answer = service.answer(TAUGHT[0], user_id="1", guild_id="100")
        assert answer.adapter == "a" and answer.sources  # retrieved and routed...
        assert embeddings.queries == [TAUGHT[0]]  # ...on one embedding
    finally:
        kb.close()


def test_what_the_server_taught_is_labelled_and_nothing_else_is(
    scoped, packaged_embeddings, tmp_path: Path
) -> None:
    """With nothing in the knowledge base: a question the adapter was taught is answered by it, shown
    as what this server taught; a general one gets the base, marked general; a question about the
    community that nobody taught gets no guess at all."""
    import chromadb

    from adapters.prompt import GENERAL_KNOWLEDGE, NOTHING_FOUND
    from adapters.prompt import TAUGHT as TAUGHT_LABEL
    from knowledge.chain import AnswerService
    from knowledge.store import KnowledgeBase

    scoped.set_active_adapter("a")
    kb = KnowledgeBase(chromadb.PersistentClient(str(tmp_path / "chroma")), packaged_embeddings)
    service = AnswerService(kb, scoped, route=routed(scoped, _routing(packaged_embeddings)))
    taught = service.answer(TAUGHT[0], user_id="1", guild_id="5")
    assert taught.adapter == "a" and taught.answer.startswith(TAUGHT_LABEL)
    general = service.answer(GENERAL[0], user_id="1", guild_id="5")
    assert general.adapter is None and not general.answer.startswith(TAUGHT_LABEL)
    assert general.answer.startswith(NOTHING_FOUND)
    local = service.answer("What is the wifi password of the bakery?", user_id="1", guild_id="5")
    assert local.answer.startswith(NOTHING_FOUND) and GENERAL_KNOWLEDGE not in local.answer
    assert not local.answer.startswith(TAUGHT_LABEL)


def test_the_modules_figures_are_the_regression_sets() -> None:
    """The module says what routing saves through the regression set: its counts must be the set's
    (it said "the 70 general questions" of a set of 14 + 56 gradable ones)."""
    import re

    from adapters.gate import core_regression_questions, load_regression_questions
    from adapters.serving import _routing

    said = re.search(
        r"(\d+) gradable questions of the regression set \(the product's (\d+) and (\d+) general ones\)",
        " ".join((_routing.__doc__ or "").split()),
    )
    assert said is not None, "the module no longer says which questions the figure is about"
    every, core = load_regression_questions(), core_regression_questions()
    gradable = [q for q in every if q.expected_any]
    core_gradable = [q for q in core if q.expected_any]
    assert [int(n) for n in said.groups()] == [len(gradable), len(core_gradable), len(every) - len(core)]
