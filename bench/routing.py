"""Which questions an adapter answers under routing, by threshold (``LOOPBOT_MODEL_ADAPTER_MIN_SIMILARITY``).

A version answers a question when its cosine with one of the version's trained questions (the
knowledge base's embedder, MiniLM by default) is at least the threshold; anything else goes to what is
beneath it (adapters/routing.py). Scopes here are the first N questions of bench/data/learning_facts.json
(the learning proof's facts; the product's scope also holds each correction's rephrasings, which only
widens it). For each N and threshold, the share routed to the adapter of:

* **paraphrases**: each taught fact asked in other words (written for the benchmark): should go to it;
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
    import numpy as np

    from adapters._calibration import INSTRUCTIONS
    from adapters.evaluation import load_regression_questions
    from bot.settings import load_settings
    from bot.wiring import build_embeddings

    facts = json.loads((DATA / "learning_facts.json").read_text(encoding="utf-8"))["facts"]
    regression = [q.question for q in load_regression_questions()]
    with (DATA / "regression_candidates.csv").open(encoding="utf-8") as handle:
        other = [row["question"] for row in csv.DictReader(handle) if row["question"] not in set(regression)]
    community = [
        json.loads(line)["question"]
        for line in (DATA / "answer_quality" / "questions.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    embeddings = build_embeddings(load_settings())

    def embed(texts: list[str]) -> Any:
        matrix = np.asarray(embeddings.embed_documents(texts), dtype=np.float32)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)

    taught, paraphrases = embed([f[0] for f in facts]), embed([f[3] for f in facts])
    sets = {
        "regression": embed(regression),
        "other_general": embed(other),
        "instructions": embed(list(INSTRUCTIONS[:16])),
        "community": embed(community),
    }
    result: dict[str, Any] = {
        "machine": machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "counts": {"paraphrases": len(facts), **{name: len(m) for name, m in sets.items()}},
        "sizes": {},
    }
    for size in SIZES:
        scope = taught[:size]
        closest = {"paraphrases": (paraphrases[:size] @ scope.T).max(axis=1)}
        closest |= {name: (matrix @ scope.T).max(axis=1) for name, matrix in sets.items()}
        row: dict[str, Any] = {
            name: {
                "min": round(float(values.min()), 3),
                "max": round(float(values.max()), 3),
                **{f"routed@{t}": round(float((values >= t).mean()), 3) for t in THRESHOLDS},
            }
            for name, values in closest.items()
        }
        near = np.argsort(-closest["community"])[:3]  # the community questions it reaches first
        row["community_nearest"] = [
            [
                round(float(closest["community"][i]), 3),
                community[i],
                facts[int((sets["community"][i] @ scope.T).argmax())][0],
            ]
            for i in near
        ]
        result["sizes"][str(size)] = row
        print(size, json.dumps({k: v for k, v in row.items() if k != "community_nearest"}), flush=True)
    write("routing", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
