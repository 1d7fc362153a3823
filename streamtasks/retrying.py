"""Riding out Redis outages: retry with exponential backoff (tenacity), one log line per outage."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

from streamtasks.errors import BrokerUnavailable

T = TypeVar("T")

log = logging.getLogger(__name__)


class Outage:
    """Logs once when Redis becomes unreachable and once when it is back, whatever the threads."""

    def __init__(self, who: str):
        self.who = who
        self._since: float | None = None
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        log.warning(
            "%s: Redis unreachable (%s); retrying with backoff",
            self.who,
            exc,
            extra={"who": self.who},
        )

    def recovered(self) -> None:
        with self._lock:
            if self._since is None:
                return
            down = time.monotonic() - self._since
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
    `give_up_after` seconds pass (then BrokerUnavailable is raised)."""
    stops: list[tenacity.stop.stop_base] = []
    if stop is not None:
        stops.append(tenacity.stop_when_event_set(stop))
    if give_up_after is not None:
        stops.append(tenacity.stop_after_delay(give_up_after))

    def pause(seconds: float) -> None:
        if stop is None:
            time.sleep(seconds)
        else:
            stop.wait(seconds)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(BrokerUnavailable),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=max_wait),
        stop=tenacity.stop_any(*stops) if stops else tenacity.stop_never,
        sleep=pause,
        before_sleep=lambda state: outage.failed(state.outcome.exception()),  # type: ignore[union-attr, arg-type]
        reraise=True,
    )
    result = retrying(fn)
    outage.recovered()
    return result
