"""Helpers shared by the unit and integration tests: a clock that leaps, a worker running in a
background thread, and a bounded wait for state that only Redis can report (the manual clock is
streamtasks.testing's)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from streamtasks import App, Worker
from streamtasks.testing import EPOCH


class LeapingClock:
    """A clock that jumps `step` seconds on every reading, so anything delayed is due at once."""

    def __init__(self, now: float = EPOCH, step: float = 3600.0):
        self.now = now
        self.step = step
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += self.step
            return self.now


@contextmanager
def running(worker: Worker, timeout: float = 10.0) -> Iterator[Worker]:
    """Run `worker.run()` in a thread for the duration of the block, then stop and join it."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"test-{worker.name}", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout)
        assert not thread.is_alive(), "worker did not stop in time"
        if errors:
            raise errors[0]


def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Wait for state nothing signals (Redis-side idle times, pending lists); fail on timeout."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.01)


def stream_len(app: App, queue: str = "default") -> int:
    """Entries in the queue's stream (0 when it does not exist yet)."""
    return int(app.broker.client.xlen(app.keys(queue).stream))


def delayed_len(app: App, queue: str = "default") -> int:
    return int(app.broker.client.zcard(app.keys(queue).delayed))
