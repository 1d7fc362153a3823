"""Stopping a run before it ends by itself: at its time limits, or when it is revoked as it runs.

An `async def` task is stopped the asyncio way, by cancelling it; at its soft limit the
cancellation reaches it as SoftTimeLimitExceeded instead (`Interruptible`), which it may catch.

A plain task runs on a thread that nothing can stop from outside. What can be done is to raise an
exception in it (CPython's PyThreadState_SetAsyncExc), which it sees at its next line of Python;
`ThreadRun` does that only while the task itself runs, never once it has returned to the worker.
At the hard limit the worker gives up on the thread: the run's outcome is decided without it and
another thread takes its place, so a task stuck in C (a socket read without a timeout) no longer
holds a slot. The thread runs on until its task returns, and its outcome is then dropped.

`Alarms` is the one thread that keeps the time limits of plain tasks.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

from streamtasks.errors import SoftTimeLimitExceeded, TimeLimitExceeded

T = TypeVar("T")

log = logging.getLogger(__name__)


class RevokedWhileRunning(SoftTimeLimitExceeded):
    """What a plain task with a soft time limit sees when it is revoked while it runs."""

    def __init__(self, message: str = "the task was revoked while it ran") -> None:
        super().__init__(message)


def _raise_in(ident: int, exc_type: type[BaseException] | None) -> None:
    """Raise `exc_type` in thread `ident` at its next line of Python; None takes back one that
    has not been raised yet."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), None if exc_type is None else ctypes.py_object(exc_type)
    )


class ThreadRun:
    """The thread a plain task runs on, for as long as the task runs: made by that thread before
    it calls the task, ended by it (`end`) as soon as the task returns or raises."""

    def __init__(self) -> None:
        self.ident = threading.get_ident()
        self._lock = threading.Lock()
        self._running = True
        #: The worker stopped waiting for this run (its time limit passed): its outcome is the
        #: worker's, whatever the task does after.
        self.given_up = False

    def interrupt(self, exc_type: type[SoftTimeLimitExceeded]) -> None:
        """Raise `exc_type` in the task, if it still runs."""
        with self._lock:
            if self._running:
                _raise_in(self.ident, exc_type)

    def give_up(self) -> bool:
        """Stop waiting for the task; True if it still ran (the caller then decides its outcome).
        TimeLimitExceeded is raised in it, which ends it if it runs Python code and lets it."""
        with self._lock:
            if not self._running:
                return False
            self._running = False
            self.given_up = True
            _raise_in(self.ident, TimeLimitExceeded)
            return True

    def end(self) -> bool:
        """Called by the task's thread once the task returned or raised: nothing is raised in it
        after this. True if the worker gave up on the run meanwhile."""
        # One raised as the task returned (too late to matter) may come out of here; the caller
        # calls again until this returns, and none comes after.
        with self._lock:
            self._running = False
            _raise_in(self.ident, None)
            return self.given_up

    def where(self) -> str:
        """The line the task's thread is at now."""
        frame = sys._current_frames().get(self.ident)
        if frame is None:
            return "?"
        return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


class Alarm:
    __slots__ = ("cancelled", "fn")

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Alarms:
    """One thread that calls functions at given times on the `clock`, started on first use (and
    again should it have died)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.clock = clock
        self._due: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def at(self, when: float, fn: Callable[[], None]) -> Alarm:
        """Call `fn` (on the alarms' thread) at `when`, unless cancelled first."""
        alarm = Alarm(fn)
        with self._changed:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name=f"{self.name}-alarms", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._due, (when, next(self._order), alarm))
            if self._due[0][2] is alarm:
                self._changed.notify_all()
        return alarm

    def close(self) -> None:
        """Drop what is due and stop the thread (after the alarm it calls now, if any); a later
        `at` starts another."""
        with self._changed:
            thread, self._thread = self._thread, None
            self._due.clear()
            self._changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            with self._changed:
                while True:
                    if self._thread is not me:
                        return  # closed, or replaced
                    if self._due and self._due[0][2].cancelled:
                        heapq.heappop(self._due)
                        continue
                    wait = self._due[0][0] - self.clock() if self._due else None
                    if wait is not None and wait <= 0:
                        break
                    self._changed.wait(wait)
                alarm = heapq.heappop(self._due)[2]
            try:
                alarm.fn()
            except Exception:  # one alarm failing must not end the others
                log.critical("alarm %r failed", alarm.fn, exc_info=True)


class Interruptible:
    """Awaits a coroutine as `await` would, except that a cancellation that follows `soften()`
    reaches the coroutine as SoftTimeLimitExceeded, not CancelledError, and is taken back from
    its asyncio task: the task may catch it, clean up, and go on awaiting."""

    def __init__(self, coro: Coroutine[Any, Any, T]):
        self._coro = coro
        self._soft = False

    def soften(self) -> None:
        self._soft = True

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        send: Any = None
        throw: BaseException | None = None
        while True:
            try:
                out = coro.send(send) if throw is None else coro.throw(throw)
            except StopIteration as stop:
                return stop.value
            send, throw = None, None
            try:
                send = yield out
            except GeneratorExit:
                coro.close()
                raise
            except asyncio.CancelledError as cancel:
                throw = cancel
                if self._soft:
                    self._soft = False
                    task = asyncio.current_task()
                    # Only the soft limit's own cancellation is softened: with another one
                    # pending too (the hard limit, a revocation, shutdown), the task is cancelled.
                    # (Python 3.10 cannot count them: there a soft one is always softened.)
                    if task is None or not hasattr(task, "cancelling"):
                        throw = SoftTimeLimitExceeded()
                    elif task.cancelling() == 1:
                        task.uncancel()
                        throw = SoftTimeLimitExceeded()
            except BaseException as exc:
                throw = exc
