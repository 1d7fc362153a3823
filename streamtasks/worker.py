"""The worker: read entries, run them on a thread pool, decide each outcome, settle in batches.

Threads of one worker:
- `concurrency` executors run tasks and turn each run into a settle record (`outcome.py`). An
  executor with nothing to run reads new entries itself with XREADGROUP (one at a time does),
  never more than the pool can start soon, and runs the first of them at once: no hand-off
  between a read and a run, so an idle worker starts a new task as soon as its read returns;
- the settler applies finished records, many per round trip, with the fenced `settle` script;
- the keeper (`keeper.py`) promotes delayed messages as they come due, reclaims abandoned
  entries, renews the leases of held entries and prunes idle consumers.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import os
import queue
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import streamtasks
from streamtasks import retrying
from streamtasks.broker import Batch, Entry, Reclaimed
from streamtasks.connection import MAX_BLOCK, masked
from streamtasks.errors import (
    BrokerUnavailable,
    ConfigurationError,
    SoftTimeLimitExceeded,
    StreamTasksError,
    TimeLimitExceeded,
    TimeoutError,
)
from streamtasks.keeper import SHORT_BLOCK, Keeper
from streamtasks.keys import QueueKeys
from streamtasks.limits import Alarms, Interruptible, RevokedWhileRunning, ThreadRun
from streamtasks.loop import LoopExecutor
from streamtasks.outcome import Delivery, Settle, skipped
from streamtasks.policy import DeadLetter, Revoked
from streamtasks.protocol import GONE, REFUSED
from streamtasks.runs import (
    Io,
    aexecute,
    begin,
    begins_plainly,
    context_of,
    execute,
    expired,
    finish,
    not_run,
    reclaim,
    report_buried,
    visibility_timeouts,
)

if TYPE_CHECKING:
    from streamtasks.app import App

log = logging.getLogger(__name__)

# How long ahead a read looks: the worker holds at most what the pool is expected to start this
# soon (and never more than _MAX_PREFETCH beyond one entry per executor).
_SOON = 0.05
_MAX_PREFETCH = 1000
_SETTLE_BATCH = 500
# While entries wait to run, the settler lingers this long before a round trip, so that runs
# finishing close together share one: a settle costs about what a task making one Redis call does.
_SETTLE_LINGER = 0.002
_STOP: Any = object()
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
        self._given_up = 0
        self._alarms = Alarms(self.name)
        self._loop: LoopExecutor | None = None
        # The share of async tasks among entries read lately: the loop's room counts in a read
        # only as far as async tasks come, so a queue of plain tasks is not read ahead of what
        # the threads can start (which would keep its entries from other workers).
        self._async_share = 0.0
        self._keys = {app.keys(q).stream: app.keys(q) for q in self.queues}
        self._timeouts_ms = visibility_timeouts(app)
        shortest = min([app.visibility_timeout, *(t / 1000 for t in self._timeouts_ms.values())])
        self._lease_every = shortest / 3
        self.outage = retrying.Outage(f"worker {self.name}")
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._work: collections.deque[Delivery] = collections.deque()
        self._reading = False
        self._until_idle = False
        self._rotation = list(self._keys.values())  # read in turns, so no queue starves
        self._settles: queue.SimpleQueue[list[Settle]] = queue.SimpleQueue()
        self._held: dict[tuple[str, str], Delivery] = {}
        self._changed = threading.Condition()
        self._avg_run = 1.0
        self._executors: list[threading.Thread] = []
        self._threads: list[threading.Thread] = []  # the settler and the keeper
        self._crashed: BaseException | None = None
        self._log_each = False
        self._keeper: Keeper | None = None
        # Set once a run has ended; each run has its own, so threads of an earlier run that are
        # still going (a stuck task, a read on a silent connection) touch nothing of the next.
        self._ended = threading.Event()

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
        with self._changed:
            return sum(1 for d in self._held.values() if d.started and not d.finished)

    def stop(self) -> None:
        """Stop reading; in-flight tasks finish (within shutdown_timeout) and are acked."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    # -- lifecycle -------------------------------------------------------------------------

    def _serve(self, until_idle: bool, deadline: float | None) -> None:
        # _stop is cleared when a run ends, not here: a stop() that came first must still count.
        self._abort.clear()
        self._crashed = None
        # Checked once, not per task: the per-task line is the hot path's only logging.
        self._log_each = log.isEnabledFor(logging.INFO)
        timed_out = False
        self._until_idle = until_idle
        self._ended = threading.Event()
        try:
            self._introduce()
            if not self._connect():
                return
            self._io(lambda: [self.app.broker.ensure_group(k) for k in self._keys.values()])
            self._start_loop()  # before recovery: what this consumer held may be async
            self._recover_own()
            self._start_threads()
            log.info(
                "worker %s serving %s with %d threads",
                self.name,
                ", ".join(self.queues),
                self.concurrency,
                extra={"worker": self.name},
            )
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            timed_out = not self._stop.wait(wait)
        except BrokerUnavailable:
            if not self._stop.is_set():
                raise
            # Stopped during an outage: nothing was lost, what is held returns by itself.
        finally:
            self._shutdown()
        if isinstance(self._crashed, ConfigurationError):
            raise self._crashed  # the cause itself, e.g. credentials refused, not "a thread failed"
        if self._crashed is not None:
            raise StreamTasksError(f"worker {self.name} stopped: a thread of its own failed") from (
                self._crashed
            )
        if timed_out:
            raise TimeoutError(f"queues {self.queues} not drained in time")

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
                if self._stop.wait(pause):
                    return False
                pause = min(_MOST_BETWEEN_TRIES, pause * 2)
                continue
            self.outage.recovered()
            log.info("connected to %s", server, extra={"worker": self.name})
            return True

    def _thread(self, loop: Callable[[], None], role: str) -> threading.Thread:
        """A worker thread that, should streamtasks itself fail in it, stops the whole worker
        rather than leave it fetching work that nothing will run."""

        def guarded() -> None:
            try:
                loop()
            except ConfigurationError as exc:  # e.g. credentials refused: not our bug
                log.error("worker %s stopping: %s", self.name, exc, extra={"worker": self.name})
                self._crashed = self._crashed or exc
                self.stop()
            except BaseException as exc:
                log.critical(
                    "worker %s: its %s thread failed; stopping",
                    self.name,
                    role,
                    exc_info=True,
                    extra={"worker": self.name},
                )
                self._crashed = self._crashed or exc
                self.stop()

        return threading.Thread(target=guarded, name=f"{self.name}-{role}", daemon=True)

    def _start_loop(self) -> None:
        if self.async_concurrency:
            self._loop = LoopExecutor(
                self.name, partial(self._run_async, self._ended), stall=self.loop_stall
            )
            self._loop.start()

    def _start_threads(self) -> None:
        self._keeper = Keeper(self, self._ended)
        for _ in range(self.concurrency):
            self._add_executor(self._ended)
        self._threads = [
            self._thread(self._settle_loop, "settle"),
            self._thread(self._keeper.run, "keeper"),
        ]
        for thread in self._threads:
            thread.start()

    def _add_executor(self, ended: threading.Event) -> None:
        thread = self._thread(partial(self._execute_loop, ended), f"exec-{next(_worker_numbers)}")
        self._executors.append(thread)
        thread.start()

    def _shutdown(self) -> None:
        if not self._threads:  # failed before any thread started, e.g. on a bad URL
            self._hand_back(self._unstarted(), "not started")
            self._close_loop()
            self._stop.clear()
            return
        self.stop()
        self._hand_back(self._unstarted(), "not started")
        settler, keeper = self._threads
        deadline = time.monotonic() + self.shutdown_timeout
        for thread in list(self._executors):  # not those given up on: they left the list
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._loop is not None and not self._loop.wait_idle(deadline - time.monotonic()):
            # Cancelled async runs record nothing: handed back below, they run elsewhere.
            self._loop.cancel(timeout=1.0)
        # The keeper's last reclaim may bring entries too; they are handed back with the rest.
        # It stops within its read's block, or later on a connection gone silent: not waited
        # for past that, and what it brings after this run has ended it leaves pending in Redis.
        if self._keeper is not None:
            self._keeper.stop.set()
        keeper.join(self.block + 1.0)
        # A read under way when the worker stopped returns within its block, and may bring more.
        with self._changed:
            self._changed.wait_for(lambda: not self._reading, timeout=self.block + 1.0)
        self._hand_back(self._unstarted(), "not started")
        with self._changed:
            stuck = [d for d in self._held.values() if d.started and not d.finished]
        self._hand_back(stuck, f"still running after {self.shutdown_timeout}s")
        self._settles.put(_STOP)
        settler.join(max(1.0, deadline - time.monotonic()))
        # Past the deadline the settler stops retrying: what it could not apply stays pending
        # in Redis and is redelivered, which is safe; hanging on to it is not.
        self._abort.set()
        settler.join()
        self._threads, self._executors = [], []
        self._close_loop()
        self._alarms.close()
        # Whatever is still held was settled, handed back, or left pending in Redis for
        # redelivery: a next run on this Worker starts from nothing. A task thread still running
        # past shutdown_timeout must not carry on into a next run once _stop is cleared: its run
        # has ended, whatever _stop says.
        with self._changed:
            self._held.clear()
            self._ended.set()
        self._stop.clear()
        log.info("worker %s stopped", self.name, extra={"worker": self.name})

    def _close_loop(self) -> None:
        if self._loop is not None:
            self._loop.cancel(timeout=1.0)
            self._loop.close()
            self._loop = None

    def _unstarted(self) -> list[Delivery]:
        with self._changed:
            unstarted = list(self._work)
            self._work.clear()
        return unstarted

    def _hand_back(self, deliveries: list[Delivery], why: str) -> None:
        """Give entries back at once so other workers take them without waiting for a timeout."""
        if not deliveries:
            return
        log.warning(
            "worker %s handing back %d entries (%s)",
            self.name,
            len(deliveries),
            why,
            extra={"worker": self.name},
        )
        for keys, group in _by_queue(deliveries):
            try:
                ids = [d.entry_id for d in group]
                retrying.call(
                    partial(self.app.broker.lease, keys, self.name, ids, hand_back=True),
                    self.outage,
                    give_up_after=2.0,
                )
            except StreamTasksError:
                log.warning("could not hand back entries; they return after the visibility timeout")
        self._release(deliveries)

    # -- reading ---------------------------------------------------------------------------

    def _io(self, fn: Callable[[], Any]) -> Any:
        """Call Redis, riding out outages until it answers or the worker is stopped."""
        return retrying.call(fn, self.outage, stop=self._stop)

    def _read_some(self, room: int, ended: threading.Event) -> None:
        """One read of at most `room` entries, accepted into the work queue. In drain mode an
        empty read ends the run once nothing is left anywhere."""
        # In drain() mode a read is short: it must notice soon that nothing is left.
        block_ms = int((SHORT_BLOCK if self._until_idle else self.block) * 1000)
        queues = self._rotation
        self._rotation = queues[1:] + queues[:1]
        try:
            batches = self._read(queues, room, block_ms)
            # The caller wakes executors for the last batch; earlier ones are not kept waiting
            # while a later one is looked at (its idempotency check is a round trip).
            for i, batch in enumerate(batches):
                keys, last = self._keys[batch.stream], i == len(batches) - 1
                self._accept(keys, batch.entries, ended, not last, batch.revocations)
            if self._until_idle and not batches and self._idle():
                self.stop()
        except BrokerUnavailable:
            pass  # only raised once the worker is stopping
        finally:
            with self._changed:
                self._reading = False
                if self._stop.is_set():
                    self._changed.notify_all()  # a shutdown waits for this read

    def _read(self, queues: list[QueueKeys], room: int, block_ms: int) -> list[Batch]:
        """At most `room` new entries from `queues` (COUNT applies to each stream).

        With less room than queues, look at `room` of them (taking turns) without waiting; only if
        they are empty, wait on all of them for one entry each, which may take up to one more
        entry per queue than there is room for, but never lets an empty queue hold up a busy one.
        """
        read = self.app.broker.read
        if room >= len(queues):
            return self._io(partial(read, queues, self.name, room // len(queues), block_ms))  # type: ignore[no-any-return]
        found = self._io(partial(read, queues[:room], self.name, 1, None))
        return found or self._io(partial(read, queues, self.name, 1, block_ms))  # type: ignore[no-any-return]

    def _prefetch(self) -> int:
        return min(_MAX_PREFETCH, int(self.concurrency * _SOON / max(self._avg_run, 1e-6)))

    def _room(self) -> int:
        """How many more entries to hold: the pool's size plus what it starts soon, less what is
        waiting or running. Finished runs waiting for the settler are not counted there (they
        hold up nobody), but bounded apart. Called with `_changed` held."""
        unfinished = unfinished_async = 0
        for d in self._held.values():
            if not d.finished:
                unfinished += 1
                unfinished_async += d.is_async
        # Room for the threads (what they start soon) and, apart, for the event loop.
        room = max(0, self.concurrency + self._prefetch() - (unfinished - unfinished_async))
        room += math.ceil(max(0, self.async_concurrency - unfinished_async) * self._async_share)
        return min(
            room,
            self.concurrency
            + self.async_concurrency
            + _MAX_PREFETCH
            + _SETTLE_BATCH
            - len(self._held),
        )

    def _read_room(self) -> int:
        """How many entries to read now, or 0 if no read is due: one is due when nobody else
        reads and there is room for a batch worth a round trip (half the prefetch, at least one).
        Called with `_changed` held; the caller reads that many and no more. (The event loop's
        room is not waited for: an idle thread reads what it and the loop can start now.)"""
        if self._reading:
            return 0
        room = self._room()
        return room if room >= max(1, self._prefetch() // 2) else 0

    def _idle(self) -> bool:
        with self._changed:
            if self._held:
                return False
        for keys in self._keys.values():
            length, _, delayed = self._io(partial(self.app.broker.backlog, keys))
            if length or delayed:
                return False
        return True

    def _free_room(self) -> int:
        with self._changed:
            return self._room()

    def _renewable(self) -> list[tuple[QueueKeys, list[Delivery]]]:
        """Held entries whose leases need renewing, by queue: what is waiting or running; not
        what is being settled (the ack may have landed already) nor what was acked on receipt
        (it is no longer pending)."""
        with self._changed:
            held = [
                d
                for d in self._held.values()
                if not d.settling and (d.options is None or d.options.acks_late or not d.started)
            ]
        return _by_queue(held)

    def _stop_revoked(self, io: Io) -> None:
        """Look for revocations of the tasks running here (asking Redis through `io`), and stop
        those that can be: an async task is cancelled, a plain one with a soft time limit gets
        RevokedWhileRunning; any of them sees `current_task().revoked` from now on."""
        with self._changed:
            running = [
                d
                for d in self._held.values()
                if d.started and not d.finished and not d.revoked and d.problem is None
            ]
        for keys, group in _by_queue(running):
            revoked = io(partial(self.app.broker.revoked_among, keys, [d.task_id for d in group]))
            for d in group:
                if d.task_id not in revoked:
                    continue
                d.revoked = True
                log.info(
                    "%s[%s] was revoked while it runs%s",
                    d.task_name,
                    d.task_id,
                    "; stopping it" if d.interrupt else "",
                    extra={"task_id": d.task_id, "worker": self.name},
                )
                if d.interrupt is not None:
                    d.interrupt()

    def _recover_own(self) -> None:
        """Re-run what this consumer (same name) held when it last stopped."""
        for keys in self._keys.values():
            cursor = "-"
            while True:
                found = self._io(partial(self._reclaim, keys, cursor, self._ended, own=True))
                cursor = found.cursor
                if cursor == "-":
                    break

    def _reclaim(
        self,
        keys: QueueKeys,
        cursor: str,
        ended: threading.Event,
        own: bool = False,
        limit: int | None = None,
    ) -> Reclaimed:
        """Claim abandoned entries of a queue (this consumer's own, with `own`) and accept them
        for the run that `ended` belongs to."""
        found = reclaim(
            self.app, keys, self.name, self._timeouts_ms, cursor=cursor, own=own, limit=limit
        )
        if found.entries:
            log.warning(
                "worker %s took over %d abandoned entries of %s",
                self.name,
                len(found.entries),
                keys.queue,
                extra={"worker": self.name},
            )
            self._accept(keys, found.entries, ended)
        for buried in found.dead:
            report_buried(buried, keys.queue, worker=self.name)
        return found

    def _accept(
        self,
        keys: QueueKeys,
        entries: list[Entry],
        ended: threading.Event,
        wake: bool = True,
        revocations: bool = True,
    ) -> None:
        """Hold fetched entries and send each to the pool, or settle it at once if it cannot run
        (undecodable, done under its key, revoked); `wake=False` leaves waking executors for them
        to the caller; `revocations=False`: the queue has no revoked task, no need to look.
        Entries that arrive after their run `ended` are left pending in Redis, for redelivery."""
        tasks, codec = self.app.tasks, self.app.codec
        deliveries = [Delivery.parse(keys, eid, fields, tasks, codec) for eid, fields in entries]
        with self._changed:
            if ended.is_set():
                return
            for d in deliveries:
                self._held[(keys.stream, d.entry_id)] = d
        runnable = []
        keyed = [d for d in deliveries if d.message and d.message.idempotency_key is not None]
        done: set[int] = set()
        if keyed:
            flags = self._io(
                lambda: self.app.broker.done_flags(
                    [(keys.idempotency(d.message.idempotency_key), d.task_id) for d in keyed]  # type: ignore[union-attr, arg-type]
                )
            )
            done = {id(d) for d, flag in zip(keyed, flags, strict=True) if flag}
        revoked: set[str] = set()
        if revocations:
            ids = [d.task_id for d in deliveries if d.problem is None]
            revoked = self._io(partial(self.app.broker.revoked_among, keys, ids))
        for d in deliveries:
            if d.problem is None and d.task_id in revoked:
                revoked_now = Revoked("revoked before it started")
                self._settles.put([not_run(d, revoked_now, self.app, self.name)])
            elif d.problem is not None:
                # Never run: dead-lettered with the reason, atomically with its ack.
                self._settles.put([not_run(d, DeadLetter(d.problem), self.app, self.name)])
            elif id(d) in done:
                log.info(
                    "%s[%s] already done under key %s; not run again",
                    d.task_name,
                    d.task_id,
                    d.message.idempotency_key,  # type: ignore[union-attr]
                    extra={"task_id": d.task_id},
                )
                self._settles.put([skipped(d)])
            else:
                runnable.append(d)
        if self._loop is not None and deliveries:
            coming = [d for d in runnable if d.is_async]
            if coming:
                self._loop.submit(coming)
            runnable = [d for d in runnable if not d.is_async]
            self._async_share = (self._async_share + len(coming) / len(deliveries)) / 2
        if runnable:
            with self._changed:
                if ended.is_set():
                    return
                self._work.extend(runnable)
                if wake:
                    self._changed.notify(len(runnable))

    # -- executing -------------------------------------------------------------------------

    def _next(self, ended: threading.Event) -> Delivery | None:
        """The next entry to run, reading more when there is none; None once the worker stops
        (or the run this thread belongs to has ended: see `_shutdown`)."""
        with self._changed:
            while True:
                if self._stop.is_set() or ended.is_set():
                    return None
                if self._work:
                    return self._work.popleft()
                room = self._read_room()
                if room:
                    self._reading = True
                    break
                self._changed.wait()
        self._read_some(room, ended)
        with self._changed:
            if self._stop.is_set() or ended.is_set():
                return None
            mine = self._work.popleft() if self._work else None
            # Wake one executor per entry left to the others and, if this thread runs one, one
            # to read next. Each wake-up is a futex call, tens of microseconds under
            # virtualisation, so a lone entry starts after one of them, an empty read after none.
            self._changed.notify(len(self._work) + (mine is not None))
            return mine

    def _execute_loop(self, ended: threading.Event) -> None:
        while not (self._stop.is_set() or ended.is_set()):
            d = self._next(ended)
            if d is None:
                continue
            settle = self._execute(d)
            if d.given_up:
                return  # decided and replaced: this thread is done with the worker
            if settle is None:
                d.finished = True
                self._release([d])
            else:
                self._decided(d, settle)

    def _execute(self, d: Delivery) -> Settle | None:
        """Run one task; its settle record, or None when it must not run (acked elsewhere)."""
        message, task = d.message, d.task
        assert message is not None and task is not None
        d.started = True
        late = expired(d, self.app.clock())
        if late is not None:
            return not_run(d, late, self.app, self.name)
        if not begin(d, self.app, self.name, self._io):
            return None
        soft, hard = d.options.soft_time_limit, d.options.time_limit  # type: ignore[union-attr]
        thread, alarms = None, []
        if soft is not None or hard is not None:
            thread, now = ThreadRun(), time.monotonic()
            if soft is not None:
                interrupt = partial(thread.interrupt, SoftTimeLimitExceeded)
                alarms.append(self._alarms.at(now + soft, interrupt))
                d.interrupt = partial(thread.interrupt, RevokedWhileRunning)
            if hard is not None:
                alarms.append(self._alarms.at(now + hard, partial(self._give_up, d, thread)))
        settle, took = execute(
            d,
            self.app,
            worker=self.name,
            context=partial(context_of, d, self.name, self.app, lambda: d.revoked),
            log_success=self._log_each,
            thread=thread,
        )
        for alarm in alarms:
            alarm.cancel()
        self._avg_run = 0.8 * self._avg_run + 0.2 * took
        return settle

    def _give_up(self, d: Delivery, thread: ThreadRun) -> None:
        """A plain task ran past its time limit: decide its run without it and let another
        thread take its place (or, with exit_on_stuck, stop so a new process takes this one's)."""
        where = thread.where()
        if not thread.give_up():
            return  # it ended just now
        limit = d.options.time_limit if d.options is not None else None
        assert limit is not None
        d.given_up = True
        self._given_up += 1
        exc = TimeLimitExceeded(f"ran past its time limit of {limit:g}s; it was at {where}")
        self._decided(d, finish(d, self.app, None, exc, limit, worker=self.name, log_success=False))
        replaced = "the worker stops, to be replaced" if self.exit_on_stuck else "replaced"
        log.warning(
            "worker %s: the thread running %s[%s] was given up on and %s; it runs on until the "
            "task returns (%d given up so far)",
            self.name,
            d.task_name,
            d.task_id,
            replaced,
            self._given_up,
            extra={"worker": self.name, "task_id": d.task_id},
        )
        with self._changed:
            self._executors = [t for t in self._executors if t.ident != thread.ident]
        if self.exit_on_stuck:
            self.stuck = True
            self.stop()
        elif not self._ended.is_set():
            self._add_executor(self._ended)

    def _decided(self, d: Delivery, settle: Settle) -> None:
        """A run decided: its record goes to the settler at once, never held back for a batch
        (a finished run that is not settled has no result, no ack and no idempotency mark)."""
        d.finished = True
        self._settles.put([settle])

    async def _run_async(self, ended: threading.Event, d: Delivery) -> None:
        """Run an async task on the loop, then hand its record to the settler, as an executor
        thread does for a plain one."""
        if ended.is_set():
            return  # its run is over: the entry stays pending in Redis, for redelivery
        loop = self._loop
        d.started = True
        alarms: list[asyncio.TimerHandle] = []
        try:
            late = expired(d, self.app.clock())
            if late is not None:
                settle: Settle | None = not_run(d, late, self.app, self.name)
            elif not begins_plainly(d) and not await asyncio.to_thread(
                begin, d, self.app, self.name, self._io
            ):
                settle = None
            else:
                settle, _ = await aexecute(
                    d,
                    self.app,
                    worker=self.name,
                    context=partial(context_of, d, self.name, self.app, lambda: d.revoked),
                    log_success=self._log_each,
                    cancelled_here=lambda: d.given_up or (loop is not None and loop.cancelling),
                    watch=partial(self._limit_async, d, alarms),
                )
        except asyncio.CancelledError:
            if d.given_up:
                return  # past its time limit: decided already
            raise  # shutdown: the entry is handed back with what still runs
        except BaseException as exc:  # streamtasks itself failed: stop, as a thread would
            log.critical(
                "worker %s: running %s[%s] failed; stopping",
                self.name,
                d.task_name,
                d.task_id,
                exc_info=True,
                extra={"worker": self.name},
            )
            self._crashed = self._crashed or exc
            self._release([d])
            self.stop()
            return
        finally:
            for alarm in alarms:
                alarm.cancel()
        if d.given_up:
            return  # it ended after all, but its outcome was decided at its time limit
        if settle is None:
            d.finished = True
            self._release([d])
        else:
            self._decided(d, settle)

    def _limit_async(
        self, d: Delivery, alarms: list[asyncio.TimerHandle], coro: Coroutine[Any, Any, Any]
    ) -> Awaitable[Any]:
        """Set the alarms that stop an async run at its time limits, and make its revocation
        cancel it; the awaitable to run it by."""
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        d.interrupt = partial(loop.call_soon_threadsafe, task.cancel)
        soft, hard = d.options.soft_time_limit, d.options.time_limit  # type: ignore[union-attr]
        if hard is not None:
            alarms.append(loop.call_later(hard, self._give_up_async, d, task, hard))
        if soft is None:
            return coro
        softened = Interruptible(coro)

        def soften() -> None:
            softened.soften()
            task.cancel()

        alarms.append(loop.call_later(soft, soften))
        return softened

    def _give_up_async(self, d: Delivery, task: asyncio.Task[Any], limit: float) -> None:
        """An async task ran past its time limit: decide its run as TimeLimitExceeded and
        cancel it; should it go on all the same, whatever it ends with is dropped."""
        d.given_up = True
        exc = TimeLimitExceeded(f"ran past its time limit of {limit:g}s and was cancelled")
        self._decided(d, finish(d, self.app, None, exc, limit, worker=self.name, log_success=False))
        task.cancel()

    # -- settling --------------------------------------------------------------------------

    def _settle_loop(self) -> None:
        while True:
            first = self._settles.get()
            if first is _STOP:
                return
            loop = self._loop
            if self._work or (loop is not None and loop.busy):
                time.sleep(_SETTLE_LINGER)
            batch = list(first)
            while len(batch) < _SETTLE_BATCH:
                try:
                    more = self._settles.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._settle(batch)
                    return
                batch.extend(more)
            self._settle(batch)

    def _settle(self, batch: list[Settle]) -> None:
        for keys, group in _by_queue(batch, lambda s: s.delivery):
            for s in group:
                s.delivery.settling = True
            try:
                records = [s.record for s in group]
                applied = retrying.call(
                    partial(self.app.broker.settle, keys, self.name, records),
                    self.outage,
                    stop=self._abort,
                )
            except BrokerUnavailable:
                return
            for s, code in zip(group, applied, strict=True):
                if code == REFUSED:
                    log.warning(
                        "%s[%s] finished as %s but another worker took it over meanwhile; "
                        "its outcome was not applied",
                        s.delivery.task_name,
                        s.delivery.task_id,
                        s.status,
                        extra={"task_id": s.delivery.task_id},
                    )
                elif code == GONE:
                    log.warning(
                        "%s[%s] finished as %s but its entry is gone (Redis lost it, or another "
                        "worker finished it); the result was recorded, there was nothing to ack",
                        s.delivery.task_name,
                        s.delivery.task_id,
                        s.status,
                        extra={"task_id": s.delivery.task_id},
                    )
            self._release([s.delivery for s in group])

    def _release(self, deliveries: list[Delivery]) -> None:
        with self._changed:
            for d in deliveries:
                self._held.pop((d.keys.stream, d.entry_id), None)
            self._changed.notify()  # room for a read, perhaps


def _by_queue(
    items: list[Any], delivery: Callable[[Any], Delivery] = lambda d: d
) -> list[tuple[QueueKeys, list[Any]]]:
    groups: dict[str, tuple[QueueKeys, list[Any]]] = {}
    for item in items:
        keys = delivery(item).keys
        groups.setdefault(keys.stream, (keys, []))[1].append(item)
    return list(groups.values())
