"""Riding out Redis outages: retry with exponential backoff (tenacity), one log line per outage."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import tenacity

from streamtasks.errors import BrokerUnavailable

T = TypeVar("T")

log = logging.getLogger(__name__)


class Outage:
    """Logs once when Redis becomes unreachable and once when it is back, whatever the threads.

    `clock` and `sleep` are what the retry loops of `call` read the time from and wait with; a
    test harness gives its own, so a simulated outage costs no real time."""

    def __init__(
        self,
        who: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.who = who
        self.clock = clock
        self.sleep = sleep
        self._since: float | None = None
        self._lock = threading.Lock()

    def failed(self, exc: BaseException, *, logged: bool = False) -> None:
        """Redis did not answer; `logged`: the caller has said so in its own words."""
        with self._lock:
            if self._since is not None:
                return
            self._since = self.clock()
        if logged:
            return
        log.warning(
            "%s: Redis unreachable (%s); retrying with backoff",
            self.who,
            exc,
            extra={"who": self.who},
        )

    def recovered(self) -> None:
        if self._since is None:
            return
        with self._lock:
            if self._since is None:
                return
            down = self.clock() - self._since
            self._since = None
        log.warning(
            "%s: Redis reachable again after %.1fs",
            self.who,
            down,
            extra={"who": self.who, "down_seconds": down},
        )

    @property
    def down(self) -> bool:
        return self._since is not None


def call(
    fn: Callable[[], T],
    outage: Outage,
    *,
    stop: threading.Event | None = None,
    give_up_after: float | None = None,
    max_wait: float = 5.0,
) -> T:
    """Run `fn`, retrying BrokerUnavailable with backoff until it succeeds, `stop` is set, or
    `give_up_after` seconds pass (then BrokerUnavailable is raised, never much later)."""
    began = outage.clock()
    try:
        result = fn()
    except BrokerUnavailable as exc:
        # Only a failure pays for building the retry loop: this is every enqueue's hot path.
        outage.failed(exc)
    else:
        if outage.down:
            outage.recovered()
        return result

    def pause(seconds: float) -> None:
        if stop is None:
            outage.sleep(seconds)
        else:
            stop.wait(seconds)

    retrying = tenacity.Retrying(
        sleep=pause, **_policy(outage, began, stop, give_up_after, max_wait)
    )
    result = retrying(fn)
    outage.recovered()
    return result


async def acall(
    fn: Callable[[], Awaitable[T]],
    outage: Outage,
    *,
    give_up_after: float | None = None,
    max_wait: float = 5.0,
) -> T:
    """`call` for a coroutine function, waiting with asyncio.sleep so the event loop runs on."""
    began = outage.clock()
    try:
        result = await fn()
    except BrokerUnavailable as exc:
        outage.failed(exc)
    else:
        if outage.down:
            outage.recovered()
        return result

    async def attempt() -> T:  # a coroutine function, which tenacity knows to await
        return await fn()

    retrying = tenacity.AsyncRetrying(**_policy(outage, began, None, give_up_after, max_wait))
    result = await retrying(attempt)
    outage.recovered()
    return result


def _policy(
    outage: Outage,
    began: float,
    stop: threading.Event | None,
    give_up_after: float | None,
    max_wait: float,
) -> dict[str, Any]:
    """What `call` and `acall` retry, how long they wait, and when they give up."""
    deadline = None if give_up_after is None else began + give_up_after
    backoff = tenacity.wait_random_exponential(multiplier=0.05, max=max_wait)

    def wait(state: tenacity.RetryCallState) -> float:
        pause = backoff(state)
        return pause if deadline is None else max(0.0, min(pause, deadline - outage.clock()))

    def give_up(state: tenacity.RetryCallState) -> bool:
        stopped = stop is not None and stop.is_set()
        return stopped or (deadline is not None and outage.clock() >= deadline)

    return {
        "retry": tenacity.retry_if_exception_type(BrokerUnavailable),
        "wait": wait,
        "stop": give_up,
        "before_sleep": lambda state: outage.failed(state.outcome.exception()),
        "reraise": True,
    }
