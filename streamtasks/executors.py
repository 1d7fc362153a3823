"""Where a worker run's tasks run: `ThreadPool` runs plain tasks on threads, `loop.LoopExecutor`
runs `async def` tasks on an event loop. Both are an `Executor` to the run they serve, stop a task
at its time limits (limits.py), and hand each finished run to their `Host`.

The pool's threads fetch too: a thread with nothing to run reads new entries itself (one at a
time does), never more than the pool can start soon, and runs the first of them at once: no
hand-off between a read and a run, so an idle worker starts a new task as soon as its read
returns.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol, TypeVar

from streamtasks.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from streamtasks.limits import Alarm, Alarms, RevokedWhileRunning, ThreadRun
from streamtasks.outcome import Delivery, Settle
from streamtasks.runs import begin, context_of, execute, expired, finish, not_run

if TYPE_CHECKING:
    from streamtasks.app import App

log = logging.getLogger(__name__)

T = TypeVar("T")

_numbers = itertools.count()


class Host(Protocol):
    """What an executor needs of the worker run it serves."""

    app: App
    name: str
    #: Set once the run has ended: what an executor still holds then is not settled by it.
    ended: threading.Event
    #: Whether each success is logged (checked once per run: the hot path's only logging).
    log_each: bool

    def io(self, call: Callable[[], T]) -> T:
        """A Redis call, riding out an outage until Redis answers or the worker stops."""
        ...

    def decided(self, d: Delivery, settle: Settle | None) -> None:
        """A run is over: settle it with `settle`, or (None) just let the entry go."""
        ...

    def failed(self, exc: BaseException) -> None:
        """streamtasks itself failed running `d`: stop the worker."""
        ...

    def thread(self, body: Callable[[], None], role: str) -> threading.Thread:
        """A thread that stops the worker, should streamtasks itself fail in it."""
        ...


class Executor(Protocol):
    """Runs what it is given, and tells its host how each run ended."""

    def submit(self, deliveries: list[Delivery]) -> None: ...

    @property
    def busy(self) -> bool:
        """Whether runs are waiting here, or about to finish."""
        ...

    def finish(self, deadline: float) -> None:
        """Let what runs finish until `deadline` (the run is stopping); past it, stop what can
        be stopped, recording nothing for it."""
        ...

    def close(self) -> None: ...


class Fetcher(Protocol):
    """Where the pool's idle threads get more work: the run's reading side."""

    #: Guards the pool's work and everything the fetcher decides a read by.
    changed: threading.Condition

    def stopping(self) -> bool: ...

    def read_room(self) -> int:
        """With `changed` held: how many entries to read now (0: none), the read then being the
        caller's to make, with `read`."""
        ...

    def read(self, room: int) -> None:
        """Read up to `room` entries and submit them (waking no thread for the last batch)."""
        ...


class ThreadPool:
    """`size` threads running plain tasks; one stuck past its task's time limit is replaced (or,
    with `exit_on_stuck`, the host is told through `on_stuck`)."""

    def __init__(
        self,
        host: Host,
        fetcher: Fetcher,
        size: int,
        *,
        alarms: Alarms,
        on_stuck: Callable[[], None] | None,
    ):
        self.host = host
        self.fetcher = fetcher
        self.size = size
        self._alarms = alarms
        self._on_stuck = on_stuck
        self._changed = fetcher.changed
        self._work: collections.deque[Delivery] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._given_up = 0
        #: How long a run takes, on average lately: what the fetcher reads ahead by.
        self.avg_run = 1.0

    def start(self) -> None:
        for _ in range(self.size):
            self._add_thread()

    def _add_thread(self) -> None:
        thread = self.host.thread(self._serve, f"exec-{next(_numbers)}")
        with self._changed:
            self._threads.append(thread)
        thread.start()

    def submit(self, deliveries: list[Delivery], wake: bool = True) -> None:
        """Queue these to run; `wake=False` leaves waking threads for them to the caller."""
        with self._changed:
            if self.host.ended.is_set():
                return  # left pending in Redis, for redelivery
            self._work.extend(deliveries)
            if wake:
                self._changed.notify(len(deliveries))

    @property
    def busy(self) -> bool:
        return bool(self._work)

    @property
    def waiting(self) -> int:
        """How many entries wait for a thread. Called with `changed` held."""
        return len(self._work)

    def unstarted(self) -> list[Delivery]:
        """Take back what no thread has started."""
        with self._changed:
            taken = list(self._work)
            self._work.clear()
        return taken

    def finish(self, deadline: float) -> None:
        """Wait until the threads return (not those given up on), or `deadline`: a plain task
        cannot be stopped; the run hands back what still runs then."""
        with self._changed:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Nothing to do: the threads return once the run stops, or were given up on."""

    # -- a thread of the pool ------------------------------------------------------------

    def _next(self) -> Delivery | None:
        """The next entry to run, reading more when there is none; None once the run stops."""
        with self._changed:
            while True:
                if self.fetcher.stopping():
                    return None
                if self._work:
                    return self._work.popleft()
                room = self.fetcher.read_room()
                if room:
                    break
                self._changed.wait()
        self.fetcher.read(room)
        with self._changed:
            if self.fetcher.stopping():
                return None
            mine = self._work.popleft() if self._work else None
            # Wake one thread per entry left to the others and, if this thread runs one, one to
            # read next. Each wake-up is a futex call, tens of microseconds under
            # virtualisation, so a lone entry starts after one of them, an empty read after none.
            self._changed.notify(len(self._work) + (mine is not None))
            return mine

    def _serve(self) -> None:
        while not self.fetcher.stopping():
            d = self._next()
            if d is None:
                continue
            settle = self._run(d)
            if d.given_up:
                return  # decided and replaced: this thread is done with the worker
            self.host.decided(d, settle)

    def _run(self, d: Delivery) -> Settle | None:
        """Run one task; its settle record, or None when it must not run (acked elsewhere) or
        was given up on (then `d.given_up` is set)."""
        host, app, options = self.host, self.host.app, d.options
        assert options is not None
        d.started, d.started_at = True, time.time()
        late = expired(d, app.clock())
        if late is not None:
            return not_run(d, late, app, host.name)
        if not begin(d, app, host.name, host.io):
            return None
        limited = options.soft_time_limit is not None or options.time_limit is not None
        settle, took = execute(
            d,
            app,
            worker=host.name,
            context=partial(context_of, d, host.name, app, True),
            log_success=host.log_each,
            limit=partial(self._arm, d) if limited else None,
        )
        if settle is None:  # only a run given up on has none
            d.given_up = True
            return None
        d.took = took
        self.avg_run = 0.8 * self.avg_run + 0.2 * took
        return settle

    def _arm(self, d: Delivery, thread: ThreadRun) -> Callable[[], None]:
        """Set the alarms of a run with time limits, whose task starts now on `thread`; what
        disarms them."""
        assert d.options is not None
        soft, hard, now = d.options.soft_time_limit, d.options.time_limit, time.monotonic()
        alarms: list[Alarm] = []
        if soft is not None:
            soft_limit = partial(thread.interrupt, SoftTimeLimitExceeded)
            alarms.append(self._alarms.at(now + soft, soft_limit))
            d.interrupt = partial(thread.interrupt, RevokedWhileRunning)
            if d.revoked:  # while it began: the keeper found nothing to interrupt then
                d.interrupt()
        if hard is not None:
            alarms.append(self._alarms.at(now + hard, partial(self._give_up, d, thread, hard)))

        def disarm() -> None:
            for alarm in alarms:
                alarm.cancel()

        return disarm

    def _give_up(self, d: Delivery, thread: ThreadRun, limit: float) -> None:
        """A plain task ran past its time limit: decide its run without it and let another
        thread take its place (or tell the host, which then stops)."""
        host = self.host
        where = thread.where()
        if not thread.give_up():
            return  # it ended just now
        d.given_up = True
        exc = TimeLimitExceeded(f"ran past its time limit of {limit:g}s; it was at {where}")
        host.decided(d, finish(d, host.app, None, exc, limit, worker=host.name, log_success=False))
        with self._changed:
            self._threads = [t for t in self._threads if t.ident != thread.ident]
            self._given_up += 1
        log.warning(
            "worker %s: the thread running %s[%s] was given up on and %s; it runs on until the "
            "task returns (%d given up so far)",
            host.name,
            d.task_name,
            d.task_id,
            "replaced" if self._on_stuck is None else "the worker stops, to be replaced",
            self._given_up,
            extra={"worker": host.name, "task_id": d.task_id},
        )
        if self._on_stuck is not None:
            self._on_stuck()
        elif not host.ended.is_set():
            self._add_thread()
