"""The keeper: the thread of one worker run that promotes delayed messages when they come due,
reclaims abandoned entries, renews the leases of held ones and prunes idle consumers.

Its jobs run on timers except promotion, which runs when `schedule.py` says a queue's messages
are due. Between jobs it waits on the queues' wake streams with a blocking XREAD, where producers
announce a delayed message due sooner than any before it: nothing polls for due messages.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from streamtasks.errors import BrokerUnavailable, ConfigurationError, StreamTasksError
from streamtasks.schedule import PromoteSchedule

if TYPE_CHECKING:
    from streamtasks.worker import Worker

log = logging.getLogger(__name__)

T = TypeVar("T")

# The shortest time between two promotions of one queue: a dense run of due times costs a
# promote per gap, not one per message.
PROMOTE_GAP = 0.02
# A blocking read in drain() mode, or once stopping, is short: it must notice soon.
SHORT_BLOCK = 0.05


class Keeper:
    """One worker run's keeper. `run()` loops until `stop` is set; each run has a keeper of its
    own, so one that outlives its run (stuck on a silent connection) touches nothing of the next.
    """

    def __init__(self, worker: Worker, ended: threading.Event):
        self.worker = worker
        self.stop = threading.Event()
        self._ended = ended
        self._schedule = PromoteSchedule(
            worker._keys, fallback=worker.promote_interval, gap=PROMOTE_GAP
        )
        # Each wake stream: where the keeper read up to, and the queue (stream) it belongs to.
        self._wake_after = {k.wake: "0-0" for k in worker._keys.values()}
        self._wake_queues = {k.wake: stream for stream, k in worker._keys.items()}
        self._cursors: dict[str, str] = {}
        self._failing: set[str] = set()  # queues whose promote fails other than by an outage

    def run(self) -> None:
        w = self.worker
        every = {
            "promote": w.promote_interval,
            "reclaim": w.reclaim_interval,
            "lease": w._lease_every,
            "revoked": w.reclaim_interval,
            "prune": 60.0,
        }
        jobs: dict[str, Callable[[], float | None]] = {
            "promote": self._promote,
            "reclaim": self._reclaim,
            "lease": self._renew_leases,
            "revoked": lambda: w._stop_revoked(self._keep),
            "prune": self._prune,
        }
        now = time.monotonic()
        due = {job: now + every[job] for job in jobs}
        due["promote"] = now  # what came due while no worker ran, at once
        backing_off: set[str] = set()  # jobs paused because Redis was unreachable
        while not self.stop.is_set():
            now = time.monotonic()
            for job, at in due.items():
                if now >= at:
                    due[job] = now + self._attempt(job, jobs[job], every[job], backing_off)
            announced = self._await_wakes(min(due.values()) - time.monotonic())
            now = time.monotonic()
            if backing_off and not w.outage.down:
                # Redis answers again: what paused during the outage runs now, not after its pause.
                for job in backing_off:
                    due[job] = now
                backing_off.clear()
            if announced:
                due["promote"] = min(due["promote"], now + self._schedule.wait(now, self._now_ms()))

    def _attempt(
        self, job: str, fn: Callable[[], float | None], every: float, backing_off: set[str]
    ) -> float:
        """Run one job; the seconds until it runs again: its own say, else `every`, and longer
        while Redis is unreachable (the job is then added to `backing_off`)."""
        try:
            after = fn()
        except ConfigurationError:
            raise  # e.g. credentials refused: waiting will not help; stop the worker
        except BrokerUnavailable as exc:
            self.worker.outage.failed(exc)
            backing_off.add(job)
            return min(5.0, 4 * every)
        except Exception:
            log.exception("worker %s: %s failed; will try again", self.worker.name, job)
            after = None
        backing_off.discard(job)
        return every if after is None else after

    def _keep(self, call: Callable[[], T]) -> T:
        """A Redis call: the loop logs a failure; a success after one ends the outage."""
        result = call()
        if self.worker.outage.down:
            self.worker.outage.recovered()
        return result

    def _now_ms(self) -> int:
        return int(self.worker.app.clock() * 1000)

    # -- waiting for wake-ups ------------------------------------------------------------

    def _await_wakes(self, seconds: float) -> bool:
        """Wait up to `seconds` (at most one read's block) on the queues' wake streams; True if a
        producer announced a delayed message due sooner than any before it."""
        w = self.worker
        short = w._until_idle or w._stop.is_set()
        seconds = min(seconds, SHORT_BLOCK if short else w.block)
        if seconds <= 0:
            return False
        if not self._wake_after:
            self.stop.wait(seconds)
            return False
        try:
            found = self._keep(
                partial(w.app.broker.wakes, self._wake_after, math.ceil(seconds * 1000))
            )
        except ConfigurationError:
            raise
        except BrokerUnavailable as exc:
            w.outage.failed(exc)
            self.stop.wait(seconds)
            return False
        except StreamTasksError:
            if not self._drop_spoiled_wakes():
                log.exception("worker %s: waiting for wake-ups failed", w.name)
                self.stop.wait(seconds)
            return False
        for wake, (last_id, due_ms) in found.items():
            self._wake_after[wake] = last_id
            self._schedule.announced(self._wake_queues[wake], due_ms)
        return bool(found)

    def _drop_spoiled_wakes(self) -> bool:
        """Leave out wake keys that hold something other than a stream (someone else wrote
        there), which fail every read of them all; True if there were any. Their queues' delayed
        messages are still promoted, every promote_interval instead of when due."""
        w = self.worker
        try:
            spoiled = w.app.broker.not_streams(list(self._wake_after))
        except StreamTasksError:
            return False
        for key in spoiled:
            log.warning(
                "%s holds something other than a stream; delayed messages of %s are promoted "
                "every %.1fs instead of when due until it is deleted and the worker restarted",
                key,
                w._keys[self._wake_queues[key]].queue,
                w.promote_interval,
                extra={"worker": w.name, "key": key},
            )
            del self._wake_after[key]
        return bool(spoiled)

    # -- the jobs --------------------------------------------------------------------------

    def _promote(self) -> float:
        """Promote the queues whose delayed messages are due; the seconds until more are. A queue
        whose promote fails (its keys spoiled by someone else) holds up none of the others."""
        w = self.worker
        now, now_ms = time.monotonic(), self._now_ms()
        for stream in self._schedule.due(now, now_ms):
            keys = w._keys[stream]
            try:
                moved, next_due = self._keep(partial(w.app.broker.promote, keys, now_ms))
            except BrokerUnavailable:
                raise
            except StreamTasksError as exc:
                if stream not in self._failing:
                    log.error(
                        "worker %s: promoting delayed messages of %s failed (%s); retrying "
                        "every %.1fs",
                        w.name,
                        keys.queue,
                        exc,
                        w.promote_interval,
                        extra={"worker": w.name, "queue": keys.queue},
                    )
                    self._failing.add(stream)
                self._schedule.promoted(stream, now, None)
                continue
            self._failing.discard(stream)
            self._schedule.promoted(stream, now, next_due)
            if moved:
                log.debug("moved %d due messages into %s", moved, keys.queue)
        return self._schedule.wait(time.monotonic(), self._now_ms())

    def _reclaim(self) -> None:
        w = self.worker
        if w._stop.is_set():
            return
        for keys in w._keys.values():
            room = w._free_room()
            if room <= 0:
                return
            cursor = self._cursors.get(keys.stream, "-")
            found = self._keep(partial(w._reclaim, keys, cursor, self._ended, limit=room))
            self._cursors[keys.stream] = found.cursor

    def _renew_leases(self) -> None:
        w = self.worker
        for keys, group in w._renewable():
            ids = [d.entry_id for d in group]
            lost = self._keep(partial(w.app.broker.lease, keys, w.name, ids, hand_back=False))
            for d in group:
                if d.entry_id in lost:
                    log.warning(
                        "%s[%s] was taken over by another worker while held here",
                        d.task_name,
                        d.task_id,
                        extra={"task_id": d.task_id},
                    )

    def _prune(self) -> None:
        w = self.worker
        idle_ms = int(w.prune_idle * 1000)
        for keys in w._keys.values():
            removed = self._keep(partial(w.app.broker.prune, keys, w.name, idle_ms))
            if removed:
                log.info("removed %d idle consumers from %s", removed, keys.queue)
