"""Which pairs a training run uses, and which the gate judges it on: the policy, apart from the run.

- when to train (:func:`needs_training`: enough new pairs, the interval, a changed guild adapter);
- which pairs train and which are held out for the gate (:func:`split_for_gate`,
  :func:`held_out_taught`);
- for a member's adapter, which of the guild's pairs it keeps (:func:`kept_guild_pairs`);
- the answers corrections replaced (:func:`rejected_answers`) and how many anchors a run replays
  (:func:`anchor_count`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.registry import AdapterRegistry, AdapterVersion
    from bot.settings import Settings
    from feedback.log import FeedbackLog
    from feedback.records import Pair

SPLIT_SEED = 0  # fixed: a question stays on the same side of the split as the log grows


def new_pair_count(pairs: Sequence[Pair], registry: AdapterRegistry) -> int:
    """Pairs not used by the newest version (all of them when nothing was trained yet)."""
    versions = registry.list()
    seen = set(versions[-1].pair_ids) | set(versions[-1].heldout_pair_ids) if versions else set()
    return sum(1 for p in pairs if str(p.id) not in seen)


def needs_training(
    settings: Settings,
    pairs: Sequence[Pair],
    registry: AdapterRegistry,
    now: float | None = None,
    *,
    beneath: AdapterVersion | None = None,
) -> tuple[bool, str]:
    """The ``--if-needed`` rule: enough new pairs AND the minimum interval since the last version.

    A member's adapter (``beneath``: the guild's active adapter it is trained over) is also retrained
    when its latest version (promoted or not: a refused retrain is not retried) was trained over
    another: it learned over, and kept the pairs of, a guild adapter no longer served beneath it."""
    versions = registry.list()
    if versions and len(pairs) >= settings.train.min_pairs and beneath is not None:
        over = versions[-1].train_config.get("beneath_adapter")
        if over is None or Path(over).resolve() != beneath.path.resolve():
            was = Path(over).name if over else "none"
            return True, (
                f"the guild's adapter changed since {versions[-1].version} was trained ({was} -> {beneath.version})"
            )
    fresh = new_pair_count(pairs, registry)
    if fresh < settings.train.min_pairs:
        return False, f"{fresh} new pair(s) since the last run, {settings.train.min_pairs} needed"
    if versions:
        hours = ((now or time.time()) - versions[-1].created) / 3600
        if hours < settings.train.min_interval_hours:
            return False, (
                f"last run {hours:.1f} h ago, the minimum interval is {settings.train.min_interval_hours:g} h"
            )
    return True, f"{fresh} new pair(s)"


def split_for_gate(
    pairs: Sequence[Pair], active: AdapterVersion | None, eval_fraction: float
) -> tuple[list[Pair], dict[str, list[Pair]]]:
    """(train pairs, the gate's pair sets ``taught`` / ``retained`` / ``heldout``).

    Corrections and taught (imported) pairs are always trained on: they are what the loop must learn.
    A share of the 👍 answers is held out to check the answer style, chosen among those the active
    version did not hold out, so a pair held out in one run is trained on in the next and none is
    withheld for good. ``taught``: trained pairs the active version was not trained on; ``retained``: the rest.
    """
    from feedback.dataset import split_pairs

    rested = set(active.heldout_pair_ids) if active is not None else set()
    eligible = [p for p in pairs if p.kind == "positive" and str(p.id) not in rested]
    _, heldout = split_pairs(eligible, eval_fraction, SPLIT_SEED)
    held = {p.id for p in heldout}
    train = [p for p in pairs if p.id not in held]
    earlier = set(active.pair_ids) if active is not None else set()
    sets = {
        "taught": [p for p in train if str(p.id) not in earlier],
        "retained": [p for p in train if str(p.id) in earlier],
        "heldout": heldout,
    }
    return train, sets


def held_out_taught(pairs: Sequence[Pair], eval_fraction: float) -> list[Pair]:
    """The taught (imported) pairs an eval set keeps out of training: ``eval_fraction`` of their
    questions, the same ones every run (a question stays on its side as the data grows)."""
    from feedback.dataset import split_pairs

    _, held_out = split_pairs([p for p in pairs if p.kind == "taught"], eval_fraction, SPLIT_SEED)
    return held_out


def kept_guild_pairs(
    shared: Sequence[Pair], beneath: AdapterVersion | None, member_pairs: int, per_member_pair: int = 2
) -> list[Pair]:
    """For a member's adapter trained over ``beneath`` (the guild's): the shared pairs ``beneath`` was
    trained on and still in force, newest first, at most ``per_member_pair`` for each of the member's
    pairs. Trained beside the member's, they tell the member's LoRA to keep the guild's answers
    (bench/member_adapter.py); a shared pair may train a private adapter, never the other way round.
    Their ids join the version's pair ids, so forgetting their authors retires it."""
    if beneath is None:
        return []
    wanted = set(beneath.pair_ids)
    chosen = [p for p in shared if str(p.id) in wanted]
    chosen.sort(key=lambda p: p.id, reverse=True)
    return chosen[: per_member_pair * member_pairs]


def rejected_answers(log: FeedbackLog, pairs: Sequence[Pair]) -> dict[int, str]:
    """For each correction among ``pairs`` (by pair id): the answer it replaced, which members
    rejected. The gate counts how often it comes back; preference training trains against it."""
    corrected = {p.id: p.answer_id for p in pairs if p.kind == "corrected" and p.answer_id is not None}
    texts = log.answer_texts(corrected.values())
    return {pair_id: texts[answer_id] for pair_id, answer_id in corrected.items() if answer_id in texts}


def anchor_count(settings: Settings, pairs: int) -> int:
    """How many anchors a run of ``pairs`` trained pairs replays: ``anchors``, or ``anchors_per_pair``
    per pair when that is more (up to the 46 there are); none when ``anchors`` is 0."""
    from adapters.model import INSTRUCTIONS

    if settings.train.anchors == 0:
        return 0
    wanted = max(settings.train.anchors, math.ceil(settings.train.anchors_per_pair * pairs))
    return min(len(INSTRUCTIONS), wanted)
