"""When a worker next promotes each queue's delayed messages: at their due time, without polling.

The keeper learns due times from two places: `promote` returns the next due time left in the
delayed set, and the queue's wake stream announces a message that comes due sooner than any
before it. A queue is promoted once its earliest known due time has passed, or `fallback` seconds
after its last promotion for producers that add delayed messages without announcing them, and
never twice within `gap` seconds (a dense run of due times costs a promote per gap, not per
message). `now` is a monotonic reading and `now_ms` the app's wall clock, both passed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class PromoteSchedule:
    def __init__(self, queues: Iterable[str], *, fallback: float, gap: float):
        self.fallback = fallback
        self.gap = gap
        # Earliest due time known per queue (wall-clock ms; 0: look at once, inf: none known),
        # and when it was last promoted (monotonic seconds).
        self._due_ms = dict.fromkeys(queues, 0.0)
        self._promoted = dict.fromkeys(self._due_ms, -math.inf)

    def due(self, now: float, now_ms: float) -> list[str]:
        """The queues to promote now."""
        return [q for q in self._due_ms if self._wait(q, now, now_ms) <= 0]

    def wait(self, now: float, now_ms: float) -> float:
        """Seconds until some queue is due (0 if one is now)."""
        return max(0.0, min(self._wait(q, now, now_ms) for q in self._due_ms))

    def promoted(self, queue: str, now: float, next_due_ms: int | None) -> None:
        """Record a promotion of `queue` and the due time of what it left in the delayed set."""
        self._promoted[queue] = now
        self._due_ms[queue] = math.inf if next_due_ms is None else next_due_ms

    def announced(self, queue: str, due_ms: float) -> None:
        """A producer added a message to `queue` due at `due_ms`, sooner than any before it."""
        self._due_ms[queue] = min(self._due_ms[queue], due_ms)

    def _wait(self, queue: str, now: float, now_ms: float) -> float:
        since = now - self._promoted[queue]
        until_due = min((self._due_ms[queue] - now_ms) / 1000, self.fallback - since)
        return max(self.gap - since, until_due)
