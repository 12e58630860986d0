"""Rank fusion: merge several rankings of chunk ids into one; and the lexical index's rankings of a query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def rrf_fuse(
    rankings: Sequence[Sequence[str]], *, k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion: list ``i`` gives ``weights[i] / (k + rank)`` to its items; best first.

    RRF needs no score calibration, which matters here: Chroma distances and BM25 scores live on
    unrelated scales, and the dense side is near-random on Japanese text while the lexical is not.
    """
    scores: dict[str, float] = {}
    weights = weights if weights is not None else [1.0] * len(rankings)
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))


@dataclass
class LexicalRanking:
    """One lexical table's ranking of a query: chunk ids best first, the weight fusion gives it, and
    the collection each chunk was found in."""

    ids: list[str]
    weight: float
    collections: dict[str, str]


def lexical_rankings(
    lexical: Any, query: str, names: Sequence[str], candidates: int, floor: float, latin_weight: float
) -> list[LexicalRanking]:
    """The lexical index's rankings of ``query`` in the collections ``names``: the trigram table's
    (weight 1) and, when ``latin_weight`` is above 0, the word table's (that weight); rows scoring under
    ``floor`` x the best BM25 are dropped."""
    rankings = []
    # A table whose ranking would count for nothing is not queried at all.
    tables = ["grams"] + (["words"] if latin_weight > 0 else [])
    for table, rows in lexical.search(query, list(names), candidates, tables=tables).items():
        if not rows:
            continue
        # BM25 is comparable within one query: rows far below the best matched only common terms and
        # would outvote a strong dense hit under RRF.
        best = rows[0][2] * floor  # bm25 is negative: lower is better
        kept = [row for row in rows if row[2] <= best]
        # English paraphrase is the dense side's strength; other scripts are the lexical side's.
        rankings.append(
            LexicalRanking(
                [chunk_id for chunk_id, _, _ in kept],
                latin_weight if table == "words" else 1.0,
                {chunk_id: name for chunk_id, name, _ in kept},
            )
        )
    return rankings
