"""The progress line the admin cog shows while a cycle runs (bot/cogs/_progress.py)."""

from __future__ import annotations

from bot.cogs._progress import describe_progress


def test_progress_events_read_as_members_would_see_them() -> None:
    assert describe_progress({"event": "step", "step": 10, "total": 40, "seconds": 20.0}) == (
        "training: step 10 of 40, about 60 s left"
    )
    assert "about 5 min left" in describe_progress({"event": "step", "step": 1, "total": 61, "seconds": 5.0})
    preference = {"event": "step", "step": 12, "total": 14, "phase": "preference"}
    assert describe_progress(preference) == "training: step 12 of 14 (preferences)"
    checked = {"event": "step", "step": 10, "total": 40, "seconds": 20.0, "until_learned": True}
    assert describe_progress(checked) == (
        "training: step 10 of at most 40 (until the taught facts are learned), at most 60 s left"
    )
    learned = {"event": "learned", "step": 36, "learned": 6, "of": 20}
    assert describe_progress(learned) == "training: 6 of 20 taught facts learned at step 36"
    assert describe_progress({"event": "gate", "pairs": 20}).startswith("gate: ") and "20 pairs" in (
        describe_progress({"event": "gate", "pairs": 20})
    )
