"""How the admin cog tells a running training cycle's progress: each event in a few words."""

from __future__ import annotations

from typing import Any


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def describe_progress(event: Any) -> str:
    """A cycle's progress event (from the training process, or the gate's) in a few words."""
    if not isinstance(event, dict):
        return str(event)[:200]
    kind = event.get("event")
    if kind == "step" and event.get("total"):
        step, total = int(event.get("step", 0)), int(event["total"])
        remaining = ""
        if step and event.get("seconds"):
            remaining = _duration(float(event["seconds"]) / step * (total - step))
        if event.get("until_learned"):  # it stops once every taught fact is learned
            left = f", at most {remaining} left" if remaining else ""
            return f"training: step {step} of at most {total} (until the taught facts are learned){left}"
        phase = " (preferences)" if event.get("phase") == "preference" else ""
        left = f", about {remaining} left" if remaining else ""
        return f"training: step {step} of {total}{phase}{left}"
    if kind == "learned":
        return f"training: {event.get('learned')} of {event.get('of')} taught facts learned at step {event.get('step')}"
    if kind == "eval" and event.get("loss") is not None:
        return f"training: eval loss {float(event['loss']):.2f} at step {event.get('step')} of {event.get('total')}"
    if kind == "start":
        return "training: loading the model"
    if kind == "done":
        return f"trained in {_duration(float(event.get('train_seconds', 0)))}; the gate is next"
    if kind == "gate":
        return f"gate: the candidate and the active adapter answer {event.get('pairs')} pairs and the regression set"
    return str(kind or event)[:200]
