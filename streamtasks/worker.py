"""The worker: serves an app's queues, one run at a time (`run()` until stopped, or `drain()`
until nothing is left). This module holds what a worker is across runs: its settings, its
introduction and its wait for Redis at start; each run is a `session.Session`, which holds the
run's entries and its parts (executors, settler, keeper).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

import streamtasks
from streamtasks import retrying
from streamtasks.connection import MAX_BLOCK, masked
from streamtasks.errors import BrokerUnavailable, ConfigurationError, StreamTasksError, TimeoutError
from streamtasks.limits import Alarms
from streamtasks.registry import BEAT, TTL, Registration
from streamtasks.runs import visibility_timeouts
from streamtasks.session import Figures, Session

if TYPE_CHECKING:
    from streamtasks.app import App
    from streamtasks.metrics import WorkerMetrics

log = logging.getLogger(__name__)

# Trying to reach Redis at start: first again after this long, doubling to at most the other.
_FIRST_RETRY = 0.5
_MOST_BETWEEN_TRIES = 30.0
_worker_numbers = itertools.count()


def default_name() -> str:
    """host-pid-random: unique even where containers share a host name and all run as pid 1."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}-{next(_worker_numbers)}"


class Worker:
    """Runs the tasks of `app` from `queues` (default: every queue with a registered task).

    `run()` blocks until `stop()`; `drain()` returns once every queue it serves is empty and nothing
    is in flight. Durations are in seconds. A task still running `shutdown_timeout` after `stop()`
    is handed back to other workers; its thread cannot be stopped and runs on, so give an embedded
    worker a generous timeout. Delayed messages and retries are promoted when they come due, as
    their producers announce them; `promote_interval` bounds how late one added without that
    announcement (by hand, or by a producer in another language) can be.

    A plain task past its `time_limit` is decided without waiting for it, and another thread
    takes its place; with `exit_on_stuck`, the worker stops instead (and `stuck` is then True),
    so that its supervisor starts a new process: `streamtasks worker -p` does that.
    """

    def __init__(
        self,
        app: App,
        queues: Iterable[str] | None = None,
        concurrency: int = 1,
        *,
        name: str | None = None,
        shutdown_timeout: float = 30.0,
        block: float = 1.0,
        reclaim_interval: float = 0.5,
        promote_interval: float = 1.0,
        prune_idle: float = 3600.0,
        startup_timeout: float | None = None,
        async_concurrency: int = 100,
        loop_stall: float = 0.5,
        exit_on_stuck: bool = False,
        metrics: WorkerMetrics | None = None,
    ):
        if concurrency < 1 or async_concurrency < 1:
            raise ConfigurationError("concurrency and async_concurrency must be at least 1")
        if not loop_stall > 0:
            raise ConfigurationError("loop_stall must be > 0")
        if not 0.001 <= block <= MAX_BLOCK:
            raise ConfigurationError(
                f"block must be between 0.001 s (Redis reads BLOCK 0 as for ever) and {MAX_BLOCK}"
                " s (a longer read would look like a dead connection)"
            )
        if not (reclaim_interval >= 0.01 and promote_interval >= 0.01):
            raise ConfigurationError("reclaim_interval and promote_interval must be >= 0.01 s")
        self.app = app
        names = list(queues or app.queues or [app.default_queue])
        self.queues = [app.check_queue(q) for q in names]
        self.concurrency = concurrency
        self.name = name or default_name()
        self.shutdown_timeout = shutdown_timeout
        self.block = block
        #: How long Redis may stay silent before the worker reports itself unhealthy: a read
        #: returns every `block` when idle, the keeper beats every 2 s when busy.
        self.silence_limit = 2 * max(block, BEAT) + 1.0
        self.reclaim_interval = reclaim_interval
        self.promote_interval = promote_interval
        self.prune_idle = prune_idle
        self.startup_timeout = startup_timeout
        # async def tasks run on an event loop, up to async_concurrency at once; a worker whose
        # queues have none starts no loop.
        served = [t for t in app.tasks.values() if t.queue in self.queues]
        self.async_concurrency = async_concurrency if any(t.is_async for t in served) else 0
        self.loop_stall = loop_stall
        # A plain task past its time limit leaves a thread behind: replaced by another, or, with
        # exit_on_stuck (a supervised process), the worker stops so that a new process starts.
        self.exit_on_stuck = exit_on_stuck
        #: Set when the worker stopped because of a thread it gave up on (see exit_on_stuck).
        self.stuck = False
        #: The time limits of plain tasks, kept on one thread for all runs.
        self.alarms = Alarms(self.name)
        #: The queues served, by stream key.
        self.keys = {app.keys(q).stream: app.keys(q) for q in self.queues}
        #: The tasks whose visibility timeout is their own, and it, in ms.
        self.timeouts_ms = visibility_timeouts(app)
        shortest = min([app.visibility_timeout, *(t / 1000 for t in self.timeouts_ms.values())])
        #: How often held entries' leases are renewed: three times per shortest timeout.
        self.lease_every = shortest / 3
        self.outage = retrying.Outage(f"worker {self.name}")
        #: Set by stop(); cleared when a run ends, not when one starts: a stop() that came
        #: before run() must still count.
        self.stop_event = threading.Event()
        #: This worker's record in the app's registry of live workers.
        self.registration = Registration(
            app,
            self.name,
            queues=self.queues,
            concurrency=concurrency,
            async_concurrency=self.async_concurrency,
            clock=app.clock,
        )
        #: Where the worker's runs are counted and timed for Prometheus, if anywhere.
        self.metrics = metrics
        if metrics is not None:
            metrics.worker = self
        self._session: Session | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.name} queues={self.queues} concurrency={self.concurrency}>"

    # -- public ----------------------------------------------------------------------------

    def run(self) -> None:
        """Serve the queues until `stop()`, then finish in-flight tasks and return."""
        self._serve(until_idle=False, deadline=None)

    def drain(self, timeout: float | None = None) -> None:
        """Serve until every queue is empty (nothing queued, delayed, or pending) and nothing is in
        flight; raises streamtasks.TimeoutError if that takes longer than `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._serve(until_idle=True, deadline=deadline)

    @property
    def running(self) -> int:
        """How many tasks are running now."""
        session = self._session
        return 0 if session is None else session.running

    def stop(self) -> None:
        """Stop reading; in-flight tasks finish (within shutdown_timeout) and are acked."""
        self.stop_event.set()
        session = self._session
        if session is not None:
            session.wake_all()

    def figures(self) -> Figures | None:
        """The current run's own figures (see session.Figures); None while not serving."""
        session = self._session
        return None if session is None else session.figures(time.monotonic())

    @property
    def ready(self) -> bool:
        """Whether the worker serves its queues now."""
        session = self._session
        return session is not None and session.serving

    def health(self) -> str | None:
        """None while the worker serves and is healthy: its threads alive and Redis heard from
        within `silence_limit` seconds; else why not."""
        session = self._session
        return "not serving" if session is None else session.health(time.monotonic())

    def stuck_thread(self) -> None:
        """A thread was given up on past a task's time limit, and exit_on_stuck is set: stop,
        so that a new process takes this one's place."""
        self.stuck = True
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    def _serve(self, until_idle: bool, deadline: float | None) -> None:
        session = self._session = Session(self, until_idle)
        self.stuck = False
        timed_out = registered = False
        try:
            self._introduce()
            if not self._connect():
                return
            # Before anything is read: a worker refused its name must not take the entries
            # its namesake holds.
            if not session.io(partial(self.registration.claim, session.counts(), self.stop_event)):
                return  # stopped while waiting for the name
            registered = True
            session.start()
            log.info(
                "worker %s serving %s with %d threads",
                self.name,
                ", ".join(self.queues),
                self.concurrency,
                extra={"worker": self.name},
            )
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            timed_out = not self.stop_event.wait(wait)
        except BrokerUnavailable:
            if not self.stop_event.is_set():
                raise
            # Stopped during an outage: nothing was lost, what is held returns by itself.
        finally:
            session.shutdown(self.shutdown_timeout)
            if registered:
                self._deregister()
            self.stop_event.clear()
            log.info("worker %s stopped", self.name, extra={"worker": self.name})
        crashed = session.crashed
        if isinstance(crashed, ConfigurationError):
            raise crashed  # the cause itself, e.g. credentials refused, not "a thread failed"
        if crashed is not None:
            raise StreamTasksError(f"worker {self.name} stopped: a thread of its own failed") from (
                crashed
            )
        if timed_out:
            raise TimeoutError(f"queues {self.queues} not drained in time")

    def _deregister(self) -> None:
        try:
            retrying.call(self.registration.release, self.outage, give_up_after=2.0)
        except StreamTasksError:
            log.warning(
                "worker %s could not remove its record from the registry; it lapses in %gs",
                self.name,
                TTL,
                extra={"worker": self.name},
            )

    def _introduce(self) -> None:
        """Say who this worker is and what it will run, before anything can go wrong."""
        extra = {"worker": self.name}
        log.info(
            "streamtasks %s worker %s: %d threads, Redis at %s",
            streamtasks.__version__,
            self.name,
            self.concurrency,
            masked(self.app.url),
            extra=extra,
        )
        tasks = sorted(
            (t for t in self.app.tasks.values() if t.queue in self.queues), key=lambda t: t.name
        )
        log.info(
            "tasks: %s",
            ", ".join(f"{t.name} ({t.queue})" for t in tasks) or "none registered",
            extra=extra,
        )
        for name in self.queues:
            if not any(t.queue == name for t in tasks):
                log.warning(
                    "queue %s has no registered task: whatever is sent there is dead-lettered "
                    "as UnknownTask (is the app imported with all its task modules?)",
                    name,
                    extra={**extra, "queue": name},
                )

    def _connect(self) -> bool:
        """Reach Redis and check its version. While it does not answer, warn with the cause and
        try again with backoff, warning at most every 30 s; BrokerUnavailable once
        `startup_timeout` has passed. False if stopped meanwhile."""
        began = time.monotonic()
        pause = _FIRST_RETRY
        while True:
            try:
                server = self.app.broker.check_server()
            except BrokerUnavailable as exc:
                waited = time.monotonic() - began
                if self.startup_timeout is not None and waited >= self.startup_timeout:
                    raise BrokerUnavailable(
                        f"Redis at {masked(self.app.url)} did not answer within "
                        f"{self.startup_timeout:g}s: {exc}"
                    ) from exc
                if self.startup_timeout is not None:
                    pause = min(pause, self.startup_timeout - waited)
                log.warning(
                    "Redis at %s does not answer (%s); trying again in %.1fs",
                    masked(self.app.url),
                    exc,
                    pause,
                    extra={"worker": self.name},
                )
                self.outage.failed(exc, logged=True)
                if self.stop_event.wait(pause):
                    return False
                pause = min(_MOST_BETWEEN_TRIES, pause * 2)
                continue
            self.outage.recovered()
            log.info("connected to %s", server, extra={"worker": self.name})
            return True
