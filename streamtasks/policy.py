"""Retry and dead-letter policy as pure functions: a finished run goes in, an outcome comes out.

Nothing here touches Redis or the clock; the worker applies the outcome in one atomic step.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamtasks.errors import Reject, Retry, TaskRevoked


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff: float = 1.0
    backoff_max: float = 300.0
    jitter: bool = True
    autoretry_for: tuple[type[BaseException], ...] = ()


@dataclass(frozen=True)
class ErrorInfo:
    type_name: str
    message: str
    traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type(exc).__name__, str(exc), text)

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type_name, "message": self.message, "traceback": self.traceback}


@dataclass(frozen=True)
class Succeeded:
    value: Any


@dataclass(frozen=True)
class Failed:
    """The task raised an exception it does not retry: recorded as FAILURE, acked."""

    error: ErrorInfo


@dataclass(frozen=True)
class RetryLater:
    delay: float
    error: ErrorInfo


@dataclass(frozen=True)
class DeadLetter:
    """Give up: copy the entry to the dead-letter stream (status DEAD)."""

    error: ErrorInfo


@dataclass(frozen=True)
class Revoked:
    """Revoked, or expired, before it started; or revoked while it ran, and stopped (`ran`).
    Status REVOKED, acked, never retried."""

    reason: str
    ran: bool = False


Outcome = Succeeded | Failed | RetryLater | DeadLetter | Revoked


def backoff_delay(
    attempt: int, base: float, cap: float, jitter: bool, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed attempt number `attempt` (the first run is attempt 1).

    The delay doubles each attempt from `base`, up to `cap`. With jitter it is drawn uniformly from
    the upper half, [d/2, d], which spreads a burst of retries without ever retrying at once.
    """
    delay = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return delay * (0.5 + rand() / 2) if jitter else delay


def delivered_too_often(deliveries: int, max_deliveries: int) -> bool:
    """Whether an abandoned entry is dead-lettered (MaxDeliveriesExceeded) instead of run again:
    delivered `deliveries` times and never settled, a worker died (or was killed) on each. The
    rule for entries that crash their workers, as `decide` is for runs that end; reclaim.lua
    applies it where it finds the entry, in the same atomic step (a test checks they agree)."""
    return deliveries >= max_deliveries


def decide(
    policy: RetryPolicy,
    attempt: int,
    exc: BaseException | None,
    value: Any = None,
    rand: Callable[[], float] = random.random,
) -> Outcome:
    """The outcome of a run that returned `value` or raised `exc` on attempt `attempt` (the first
    run is attempt 1; a task runs at most `max_retries` + 1 times)."""
    if exc is None:
        return Succeeded(value)
    if isinstance(exc, TaskRevoked):
        return Revoked(exc.message, ran=True)
    if isinstance(exc, Reject):
        return DeadLetter(ErrorInfo.of(exc))
    if isinstance(exc, (Retry, *policy.autoretry_for)):
        if attempt > policy.max_retries:
            error = ErrorInfo.of(exc)
            reason = f"gave up after {attempt} attempts: {error.message}"
            return DeadLetter(ErrorInfo(error.type_name, reason, error.traceback))
        countdown = exc.countdown if isinstance(exc, Retry) else None
        if countdown is None:
            countdown = backoff_delay(
                attempt, policy.backoff, policy.backoff_max, policy.jitter, rand
            )
        return RetryLater(countdown, ErrorInfo.of(exc))
    return Failed(ErrorInfo.of(exc))
