"""One run of a worker, from `Worker.run()` or `drain()` until it returns: the entries it holds,
how it reads more, and its parts, started and stopped in order.

Parts of a run, each a thread or two:
- the executors (executors.py): a pool of threads for plain tasks, whose idle threads read new
  entries, and an event loop for `async def` tasks (loop.py);
- the settler (settler.py) applies finished runs, many per round trip;
- the keeper (keeper.py) promotes due messages, reclaims abandoned entries, renews leases, stops
  tasks revoked as they run, beats the worker's record and prunes idle consumers.

Everything a run holds is its own, so a thread that outlives its run (a task stuck past the
shutdown timeout, a read on a silent connection) touches nothing of the next one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from streamtasks import retrying
from streamtasks.broker import Batch, Entry, Reclaimed
from streamtasks.errors import BrokerUnavailable, ConfigurationError, StreamTasksError
from streamtasks.executors import Executor, ThreadPool
from streamtasks.keeper import SHORT_BLOCK, Keeper
from streamtasks.keys import QueueKeys
from streamtasks.loop import LoopExecutor
from streamtasks.outcome import Delivery, Settle, skipped
from streamtasks.policy import DeadLetter, Revoked
from streamtasks.registry import FIGURES_EVERY
from streamtasks.runs import Io, not_run, reclaim, report_buried
from streamtasks.settler import Settler

if TYPE_CHECKING:
    from streamtasks.worker import Worker

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long ahead a read looks: the run holds at most what the pool is expected to start this
# soon (and never more than _MAX_PREFETCH beyond one entry per thread).
_SOON = 0.05
_MAX_PREFETCH = 1000
# Finished runs waiting for the settler, most: past it, reads wait for the settler.
_SETTLING_MOST = 500


class Figures(NamedTuple):
    """A worker run's own figures for its metrics: runs in flight, seconds since Redis last
    answered, entries taken over and leases renewed so far, and the queues' figures by queue
    (only while this worker measures them for the app)."""

    in_flight: int
    silence: float
    reclaimed: int
    renewed: int
    queues: dict[str, dict[str, float]]


class Session:
    """One run of `worker`; `until_idle`: a drain, which stops once nothing is left."""

    def __init__(self, worker: Worker, until_idle: bool):
        self.worker = worker
        self.app = worker.app
        self.name = worker.name
        self.outage = worker.outage
        self.keys = worker.keys
        self.block = worker.block
        self.promote_interval = worker.promote_interval
        self.reclaim_interval = worker.reclaim_interval
        self.lease_every = worker.lease_every
        self.prune_idle = worker.prune_idle
        self.until_idle = until_idle
        #: Set once the run has ended.
        self.ended = threading.Event()
        #: Checked once, not per task: the per-task line is the hot path's only logging.
        self.log_each = log.isEnabledFor(logging.INFO)
        #: Guards what is held, the pool's work and the read under way.
        self.changed = threading.Condition()
        self.crashed: BaseException | None = None
        self._stop = worker.stop_event
        self._abort = threading.Event()  # past the deadline: the settler gives up retrying
        self._held: dict[tuple[str, str], Delivery] = {}
        self._reading = False
        self._rotation = list(self.keys.values())  # read in turns, so no queue starves
        # The share of async tasks among entries read lately: the loop's room counts in a read
        # only as far as async tasks come, so a queue of plain tasks is not read ahead of what
        # the threads can start (which would keep its entries from other workers).
        self._async_share = 0.0
        self.pool = ThreadPool(
            self,
            self,
            worker.concurrency,
            alarms=worker.alarms,
            on_stuck=worker.stuck_thread if worker.exit_on_stuck else None,
        )
        self.loop = (
            LoopExecutor(self, stall=worker.loop_stall) if worker.async_concurrency else None
        )
        #: Where the run's tasks run: what starting, busyness and stopping go through.
        self.executors: list[Executor] = [self.pool, *([self.loop] if self.loop else [])]
        self.settler = Settler(
            self.app,
            self.name,
            self.outage,
            settled=self._release,
            busy=lambda: any(executor.busy for executor in self.executors),
            abort=self._abort,
            observe=worker.metrics.observe if worker.metrics is not None else None,
        )
        self.keeper: Keeper | None = None
        self._threads: list[threading.Thread] = []  # the settler's and the keeper's
        #: When Redis last answered a read or a keeper's call (time.monotonic()), and how many
        #: abandoned entries and lease renewals the run took: for health and metrics.
        self.answered = time.monotonic()
        self.reclaimed = 0
        self.renewed = 0
        #: The queues' figures for the metrics, by queue: measured by this worker while it
        #: leads the app's workers in that (see measure_queues), else none.
        self.queue_figures: dict[str, dict[str, float]] = {}

    # -- for the worker --------------------------------------------------------------------

    def start(self) -> None:
        """Start the parts, taking back first what this consumer held when it last stopped."""
        self.io(lambda: [self.app.broker.ensure_group(k) for k in self.keys.values()])
        if self.loop is not None:
            self.loop.start()  # before recovery: what this consumer held may be async
        self._recover_own()
        self.keeper = Keeper(self, time.monotonic())
        self._threads = [
            self.thread(self.settler.run, "settle"),
            self.thread(self.keeper.run, "keeper"),
        ]
        self.pool.start()
        for thread in self._threads:
            thread.start()

    @property
    def running(self) -> int:
        with self.changed:
            return sum(1 for d in self._held.values() if d.started and not d.finished)

    def wake_all(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def shutdown(self, timeout: float) -> None:
        """Stop reading, let what runs finish within `timeout`, hand back the rest, settle."""
        self.worker.stop()
        self._hand_back(self.pool.unstarted(), "not started")
        if not self._threads:  # failed before the parts started, e.g. on a bad URL
            for executor in self.executors:
                executor.close()
            self.ended.set()
            return
        deadline = time.monotonic() + timeout
        for executor in self.executors:
            executor.finish(deadline)
        # The keeper's last reclaim may bring entries too; they are handed back with the rest.
        # It stops within its read's block, or later on a connection gone silent: not waited
        # for past that, and what it brings after this run has ended it leaves pending in Redis.
        settler, keeper = self._threads
        if self.keeper is not None:
            self.keeper.stop.set()
        keeper.join(self.block + 1.0)
        # A read under way when the worker stopped returns within its block, and may bring more.
        with self.changed:
            self.changed.wait_for(lambda: not self._reading, timeout=self.block + 1.0)
        self._hand_back(self.pool.unstarted(), "not started")
        # No run is given up on past this point (its record could come after the settler's
        # last): one still running is handed back with the rest instead.
        self.worker.alarms.close()
        with self.changed:
            stuck = [d for d in self._held.values() if d.started and not d.finished]
        self._hand_back(stuck, f"still running after {timeout}s")
        self.settler.close()
        settler.join(max(1.0, deadline - time.monotonic()))
        # Past the deadline the settler stops retrying: what it could not apply stays pending
        # in Redis and is redelivered, which is safe; hanging on to it is not.
        self._abort.set()
        settler.join()
        for executor in self.executors:
            executor.close()
        # Whatever is still held was settled, handed back, or left pending in Redis for
        # redelivery. A task thread still running past the timeout must not carry on into a
        # next run: this run has ended, whatever the worker's stop event says next.
        with self.changed:
            self._held.clear()
            self.ended.set()

    # -- for the parts (executors.Host, executors.Fetcher, keeper.Held) ----------------------

    def io(self, call: Callable[[], T]) -> T:
        """Call Redis, riding out outages until it answers or the worker is stopped."""
        return retrying.call(call, self.outage, stop=self._stop)

    def thread(self, body: Callable[[], None], role: str) -> threading.Thread:
        """A thread of this run that, should streamtasks itself fail in it, stops the whole
        worker rather than leave it fetching work that nothing will run."""

        def guarded() -> None:
            try:
                body()
            except BaseException as exc:
                if isinstance(exc, ConfigurationError):  # e.g. credentials refused: not our bug
                    log.error("worker %s stopping: %s", self.name, exc, extra={"worker": self.name})
                else:
                    log.critical(
                        "worker %s: its %s thread failed; stopping",
                        self.name,
                        role,
                        exc_info=True,
                        extra={"worker": self.name},
                    )
                self.failed(exc)

        return threading.Thread(target=guarded, name=f"{self.name}-{role}", daemon=True)

    def failed(self, exc: BaseException) -> None:
        self.crashed = self.crashed or exc
        self.worker.stop()

    def decided(self, d: Delivery, settle: Settle | None) -> None:
        d.finished = True
        if settle is None:
            self._release([d])
        else:
            self.settler.put(settle)

    def stopping(self) -> bool:
        return self._stop.is_set() or self.ended.is_set()

    def hurried(self) -> bool:
        return self.until_idle or self._stop.is_set()

    def read_room(self) -> int:
        """How many entries to read now, or 0 if no read is due: one is due when nobody else
        reads and there is room for a batch worth a round trip (half the prefetch, at least one).
        Called with `changed` held; the caller reads that many and no more. (The event loop's
        room is not waited for: an idle thread reads what it and the loop can start now.)"""
        if self._reading:
            return 0
        room = self._room()
        if room < max(1, self._prefetch() // 2):
            return 0
        self._reading = True
        return room

    def read(self, room: int) -> None:
        """One read of at most `room` entries, accepted for running. In drain mode an empty read
        ends the run once nothing is left anywhere."""
        # In drain mode a read is short: it must notice soon that nothing is left.
        block_ms = int((SHORT_BLOCK if self.until_idle else self.block) * 1000)
        queues = self._rotation
        self._rotation = queues[1:] + queues[:1]
        try:
            batches = self._read(queues, room, block_ms)
            self.answered = time.monotonic()
            # The caller wakes threads for the last batch; earlier ones are not kept waiting
            # while a later one is looked at (its idempotency check is a round trip).
            for i, batch in enumerate(batches):
                keys, last = self.keys[batch.stream], i == len(batches) - 1
                self._accept(keys, batch.entries, not last, batch.revocations)
            if self.until_idle and not batches and self._idle():
                self.worker.stop()
        except BrokerUnavailable:
            pass  # only raised once the worker is stopping
        finally:
            with self.changed:
                self._reading = False
                if self._stop.is_set():
                    self.changed.notify_all()  # a shutdown waits for this read

    def free_room(self) -> int:
        with self.changed:
            return self._room()

    def reclaim(self, keys: QueueKeys, cursor: str, limit: int) -> Reclaimed:
        return self._reclaim(keys, cursor, own=False, limit=limit)

    def renewable(self) -> list[tuple[QueueKeys, list[Delivery]]]:
        """What is waiting or running; not what is being settled (the ack may have landed
        already) nor what was acked on receipt (it is no longer pending)."""
        with self.changed:
            held = [
                d
                for d in self._held.values()
                if not d.settling and (d.options is None or d.options.acks_late or not d.started)
            ]
        return by_queue(held)

    def counts(self) -> dict[str, int]:
        """What the run's record in the registry says of its work."""
        return {"in_flight": self.running, **self.settler.counts}

    def beat(self) -> None:
        self.worker.registration.beat(self.counts())

    def measure_queues(self, io: Io) -> None:
        """For the metrics: measure each queue this worker leads the measuring of (a lease per
        queue in Redis, so that one process at a time measures a queue, whichever workers
        serve it). Only what this round measured is kept: nothing stale outlives a lost lease
        or a failed round."""
        if self.worker.metrics is None:
            return
        token, ttl_ms = self.worker.registration.instance, int(FIGURES_EVERY * 2000)
        now = self.app.clock()
        figures: dict[str, dict[str, float]] = {}
        try:
            for keys in self.keys.values():
                if not io(partial(self.app.broker.lead, keys.figures, token, ttl_ms)):
                    continue
                found = io(partial(self.app.broker.queue_status, keys, []))
                figures[keys.queue] = {
                    "waiting": found.waiting,
                    "in_flight": found.in_flight,
                    "delayed": found.delayed,
                    "dead": found.dead,
                    "oldest_waiting_seconds": found.oldest_waited(now) or 0.0,
                }
        finally:
            self.queue_figures = figures

    def figures(self, now: float) -> Figures:
        """What the run measured of itself, at `now` (monotonic)."""
        return Figures(
            self.running, now - self.answered, self.reclaimed, self.renewed, self.queue_figures
        )

    def heard(self, renewed: int = 0) -> None:
        """Redis answered a keeper's call (which renewed `renewed` leases)."""
        self.answered = time.monotonic()
        self.renewed += renewed

    @property
    def serving(self) -> bool:
        """Whether the run's parts have started and it has not ended."""
        return bool(self._threads) and not self.ended.is_set()

    def health(self, now: float) -> str | None:
        """None if the run is healthy at `now` (monotonic): its threads alive and Redis heard
        from lately; else why not."""
        if not self.serving:
            return "not serving"
        dead = [t.name for t in self._threads if not t.is_alive()]
        if self.loop is not None and not self.loop.alive:
            dead.append("event loop")
        if dead:
            return f"threads stopped: {', '.join(dead)}"
        silent = now - self.answered
        if silent > self.worker.silence_limit:
            return f"no answer from Redis for {silent:.1f}s"
        return None

    def stop_revoked(self, io: Io) -> None:
        """Look for revocations of the tasks running here and stop those that can be: an async
        task is cancelled, a plain one with a soft time limit gets RevokedWhileRunning; any of
        them sees `current_task().revoked` from now on."""
        with self.changed:
            running = [
                d
                for d in self._held.values()
                if d.started and not d.finished and not d.revoked and d.problem is None
            ]
        for keys, group in by_queue(running):
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

    # -- reading ---------------------------------------------------------------------------

    def _read(self, queues: list[QueueKeys], room: int, block_ms: int) -> list[Batch]:
        """At most `room` new entries from `queues` (COUNT applies to each stream).

        With less room than queues, look at `room` of them (taking turns) without waiting; only if
        they are empty, wait on all of them for one entry each, which may take up to one more
        entry per queue than there is room for, but never lets an empty queue hold up a busy one.
        """
        read = self.app.broker.read
        if room >= len(queues):
            return self.io(partial(read, queues, self.name, room // len(queues), block_ms))
        found = self.io(partial(read, queues[:room], self.name, 1, None))
        return found or self.io(partial(read, queues, self.name, 1, block_ms))

    def _prefetch(self) -> int:
        return min(_MAX_PREFETCH, int(self.pool.size * _SOON / max(self.pool.avg_run, 1e-6)))

    def _room(self) -> int:
        """How many more entries to hold: the pool's size plus what it starts soon, less what is
        waiting or running. Finished runs waiting for the settler are not counted there (they
        hold up nobody), but bounded apart. Called with `changed` held."""
        unfinished = unfinished_async = 0
        for d in self._held.values():
            if not d.finished:
                unfinished += 1
                unfinished_async += d.is_async
        # Room for the threads (what they start soon) and, apart, for the event loop.
        room = max(0, self.pool.size + self._prefetch() - (unfinished - unfinished_async))
        loop_size = self.worker.async_concurrency
        room += math.ceil(max(0, loop_size - unfinished_async) * self._async_share)
        most = self.pool.size + loop_size + _MAX_PREFETCH + _SETTLING_MOST
        return min(room, most - len(self._held))

    def _idle(self) -> bool:
        with self.changed:
            if self._held:
                return False
        for keys in self.keys.values():
            length, _, delayed = self.io(partial(self.app.broker.backlog, keys))
            if length or delayed:
                return False
        return True

    def _recover_own(self) -> None:
        """Re-run what this consumer (same name) held when it last stopped."""
        for keys in self.keys.values():
            cursor = "-"
            while True:
                found = self.io(partial(self._reclaim, keys, cursor, own=True, limit=None))
                cursor = found.cursor
                if cursor == "-":
                    break

    def _reclaim(self, keys: QueueKeys, cursor: str, *, own: bool, limit: int | None) -> Reclaimed:
        """Claim abandoned entries of a queue (this consumer's own, with `own`) and accept them."""
        timeouts = self.worker.timeouts_ms
        found = reclaim(self.app, keys, self.name, timeouts, cursor=cursor, own=own, limit=limit)
        if found.entries:
            self.reclaimed += len(found.entries)
            log.warning(
                "worker %s took over %d abandoned entries of %s",
                self.name,
                len(found.entries),
                keys.queue,
                extra={"worker": self.name},
            )
            self._accept(keys, found.entries)
        for buried in found.dead:
            report_buried(buried, keys.queue, worker=self.name)
        return found

    def _accept(
        self, keys: QueueKeys, entries: list[Entry], wake: bool = True, revocations: bool = True
    ) -> None:
        """Hold fetched entries and send each to an executor, or settle it at once if it cannot
        run (undecodable, done under its key, revoked); `wake=False` leaves waking threads for
        them to the caller; `revocations=False`: the queue has no revoked task, no need to look.
        Entries that arrive after the run ended are left pending in Redis, for redelivery."""
        tasks, codec = self.app.tasks, self.app.codec
        deliveries = [Delivery.parse(keys, eid, fields, tasks, codec) for eid, fields in entries]
        with self.changed:
            if self.ended.is_set():
                return
            for d in deliveries:
                self._held[(keys.stream, d.entry_id)] = d
        done = self._done_already(keys, deliveries)
        revoked: set[str] = set()
        if revocations:
            ids = [d.task_id for d in deliveries if d.problem is None]
            revoked = self.io(partial(self.app.broker.revoked_among, keys, ids))
        runnable = []
        for d in deliveries:
            if d.problem is None and d.task_id in revoked:
                revoked_now = Revoked("revoked before it started")
                self.settler.put(not_run(d, revoked_now, self.app, self.name))
            elif d.problem is not None:
                # Never run: dead-lettered with the reason, atomically with its ack.
                self.settler.put(not_run(d, DeadLetter(d.problem), self.app, self.name))
            elif id(d) in done:
                log.info(
                    "%s[%s] already done under key %s; not run again",
                    d.task_name,
                    d.task_id,
                    d.message.idempotency_key,  # type: ignore[union-attr]
                    extra={"task_id": d.task_id},
                )
                self.settler.put(skipped(d))
            else:
                runnable.append(d)
        if self.loop is not None and deliveries:
            coming = [d for d in runnable if d.is_async]
            if coming:
                self.loop.submit(coming)
            runnable = [d for d in runnable if not d.is_async]
            self._async_share = (self._async_share + len(coming) / len(deliveries)) / 2
        if runnable:
            self.pool.submit(runnable, wake)

    def _done_already(self, keys: QueueKeys, deliveries: list[Delivery]) -> set[int]:
        """The deliveries (by id()) whose idempotency key says their task is done already."""
        keyed = [d for d in deliveries if d.message and d.message.idempotency_key is not None]
        if not keyed:
            return set()
        claims = [(keys.idempotency(d.message.idempotency_key), d.task_id) for d in keyed]  # type: ignore[union-attr, arg-type]
        flags = self.io(partial(self.app.broker.done_flags, claims))
        return {id(d) for d, flag in zip(keyed, flags, strict=True) if flag}

    # -- giving entries back ---------------------------------------------------------------

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
        for keys, group in by_queue(deliveries):
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

    def _release(self, deliveries: list[Delivery]) -> None:
        with self.changed:
            for d in deliveries:
                self._held.pop((d.keys.stream, d.entry_id), None)
            self.changed.notify()  # room for a read, perhaps


def by_queue(deliveries: list[Delivery]) -> list[tuple[QueueKeys, list[Delivery]]]:
    groups: dict[str, tuple[QueueKeys, list[Delivery]]] = {}
    for d in deliveries:
        groups.setdefault(d.keys.stream, (d.keys, []))[1].append(d)
    return list(groups.values())
