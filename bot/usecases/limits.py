"""Bounds on what one member can make the bot do: questions and every write path.

Each limit is a sliding 60-second window per member; a refusal says how long to wait. The bot's
front end asks before it calls a use case; nothing is recorded for a refused request.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable


class RateLimiter:
    """At most ``per_minute`` actions per member in any sliding 60-second window (0: no limit).

    The clock is injected so the limit follows the event loop's notion of time (virtual in tests).
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] | None = None) -> None:
        self.per_minute = per_minute
        # Looked up at each call, not bound now: a test clock may replace time.monotonic later.
        self._clock = clock or (lambda: time.monotonic())
        self._hits: dict[str, deque[float]] = defaultdict(deque)

    def check(self, member_id: str) -> float:
        """Record one action; 0.0 if allowed, else the seconds to wait before the next one."""
        if self.per_minute <= 0:
            return 0.0
        now = self._clock()
        hits = self._hits[member_id]
        while hits and now - hits[0] >= 60.0:
            hits.popleft()
        if len(hits) >= self.per_minute:
            return max(0.1, 60.0 - (now - hits[0]))
        hits.append(now)
        return 0.0


class WriteLimits:
    """Per-member limits on the write paths: ``/add``, ``/remember``, ``/forget``, corrections, and
    ``/privacy``'s export and learning switch (each reads or rewrites all of a member's rows).

    ``per_minute`` applies to each path separately (0: no limit)."""

    PATHS = {
        "add": "adding documents",
        "remember": "storing records",
        "forget": "forgetting",
        "correction": "sending corrections",
        "export": "downloading your data",
        "learning": "changing your learning setting",
    }

    def __init__(self, per_minute: int, clock: Callable[[], float] | None = None) -> None:
        self.per_minute = per_minute
        self._limiters = {path: RateLimiter(per_minute, clock) for path in self.PATHS}

    def refusal(self, path: str, member_id: str) -> str:
        """Record one use of ``path`` by the member; '' when allowed, else why not and when to retry."""
        wait = self._limiters[path].check(member_id)
        if not wait:
            return ""
        return (
            f"You're {self.PATHS[path]} faster than {self.per_minute} times a minute. "
            f"Try again in {int(wait) + 1} s."
        )

    def correction(self, member_id: str) -> str:
        """:meth:`refusal` for a correction."""
        return self.refusal("correction", member_id)
