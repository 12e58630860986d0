"""Which questions an adapter answers under routing, by threshold (``LOOPBOT_MODEL_ADAPTER_MIN_SIMILARITY``).

A version answers a question about a fact it was taught (adapters/serving/_routing.py): nearly the taught
question (cosine >= 0.85, naming no other name or number), or close to it (cosine >= the threshold) *and* the taught answer, under its
question, speaks of everything the question asks about. Before, close alone was enough; both rules
are measured here ("close" and "about"), through ``QuestionRouting`` itself with the knowledge base's
embedder (MiniLM by default). Scopes are the first N facts of bench/data/learning_facts.json (question
and correction; the product's scope also holds each one's rephrasing, which only widens it). For
each N and threshold, the share routed to the adapter of:

* **paraphrases**: each taught fact asked in other words (written for the benchmark): should go to it;
* **near misses**: a taught question's shape about another subject (bench/data/near_misses.json, those
  imitating a fact in scope; set A written before the rule, set B after): should not;
* **regression**: the gate's general questions (adapters/data): should not;
* **other general**: the hand-written candidates bench/regression_set.py did not keep: should not;
* **instructions**: the 16 calibration instructions replayed as anchors: should not;
* **community**: the answer-quality benchmark's questions about the same (invented) club, none of them
  a taught fact: near the adapter's topic, they show how far its scope reaches into questions that
  retrieval answers.

    python bench/routing.py

Writes bench/results/routing.json. Embedding only (a few seconds).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from _common import machine, write

DATA = Path(__file__).parent / "data"
THRESHOLDS = (0.4, 0.45, 0.5, 0.55, 0.6)
SIZES = (5, 10, 20, 40)


def main() -> int:
    import tempfile
    from functools import cache

    from adapters.gate import load_regression_questions
    from adapters.model import INSTRUCTIONS
    from adapters.registry import write_scope
    from adapters.serving import QuestionRouting
    from bot.settings import load_settings
    from bot.wiring import build_embeddings
    from knowledge.quoting import fact_answers

    facts = json.loads((DATA / "learning_facts.json").read_text(encoding="utf-8"))["facts"]
    near = json.loads((DATA / "near_misses.json").read_text(encoding="utf-8"))["questions"]
    regression = [q.question for q in load_regression_questions()]
    with (DATA / "regression_candidates.csv").open(encoding="utf-8") as handle:
        other = [row["question"] for row in csv.DictReader(handle) if row["question"] not in set(regression)]
    community = [
        json.loads(line)["question"]
        for line in (DATA / "answer_quality" / "questions.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    embeddings = build_embeddings(load_settings())
    embed_query = cache(embeddings.embed_query)
    general = {
        "regression": regression,
        "other_general": other,
        "instructions": list(INSTRUCTIONS[:16]),
        "community": community,
    }
    result: dict[str, Any] = {
        "machine": machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "counts": {
            "paraphrases": len(facts),
            "near_misses": len(near),
            **{k: len(v) for k, v in general.items()},
        },
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="routing-") as tmp:
        for size in SIZES:
            directory = Path(tmp) / str(size)
            directory.mkdir()
            write_scope(directory, [(f[0], f[1]) for f in facts[:size]])
            sets = {
                "paraphrases": [f[3] for f in facts[:size]],
                "near_misses": [q for index, q in near if index < size],
                **general,
            }
            row: dict[str, Any] = {}
            for rule, about in (("close", None), ("about", fact_answers)):
                for threshold in THRESHOLDS:
                    routing = QuestionRouting(
                        embeddings.embed_documents, embed_query, min_similarity=threshold, about=about
                    )
                    for name, questions in sets.items():
                        routed = [q for q in questions if routing.covers(directory, q)]
                        share = round(len(routed) / max(1, len(questions)), 3)
                        row.setdefault(name, {})[f"{rule}@{threshold}"] = share
                        if name == "near_misses" and threshold == 0.5:
                            row.setdefault("near_misses_routed", {})[rule] = routed
            result["sizes"][str(size)] = row
            print(size, json.dumps({k: v for k, v in row.items() if k != "near_misses_routed"}), flush=True)
        result["large_scope"] = _large_scope(Path(tmp), embeddings, fact_answers, sets)
        print("large scope", json.dumps(result["large_scope"]), flush=True)
    write("routing", result)
    return 0


def _large_scope(tmp: Path, embeddings: Any, about: Any, sets: dict[str, list[str]]) -> dict[str, Any]:
    """Routing with a household's records in scope: 2,000 taught questions (templated records of 200
    members), the time to embed the scope once (a new version) and to route each question after."""
    import time

    from adapters.registry import write_scope
    from adapters.serving import QuestionRouting

    things = ("locker", "parking space", "dentist appointment", "birthday", "allotment plot",
              "bike lock code", "favourite tea", "emergency contact", "shift day", "room number")  # fmt: skip
    taught = [
        (f"What is the {thing} of member {n}?", f"Member {n}'s {thing} is {n * 7 % 97}.")
        for n in range(200)
        for thing in things
    ]
    directory = tmp / "large"
    directory.mkdir()
    write_scope(directory, taught)
    routing = QuestionRouting(embeddings.embed_documents, embeddings.embed_query, about=about)
    questions = [q for values in sets.values() for q in values][:200]
    for question in questions:  # embedded once each, as the knowledge base's cache does in the bot
        routing.covers(tmp / "40", question)
    started = time.perf_counter()
    routing.covers(directory, questions[0])  # embeds the scope
    first = time.perf_counter() - started
    started = time.perf_counter()
    routed = sum(routing.covers(directory, question) for question in questions)
    each = (time.perf_counter() - started) / len(questions)
    return {
        "taught_questions": len(taught),
        "first_route_s": round(first, 2),  # once per version: the scope's embedding
        "route_ms": round(each * 1000, 3),  # each question after (its embedding cached)
        "routed": routed,
        "of": len(questions),
    }


if __name__ == "__main__":
    raise SystemExit(main())
