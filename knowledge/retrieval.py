"""Rank fusion: merge several rankings of chunk ids into one."""

from __future__ import annotations

from collections.abc import Sequence


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
