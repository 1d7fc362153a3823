"""The keeper: the thread of one worker run that promotes delayed messages when they come due,
reclaims abandoned entries, renews the leases of held ones, stops tasks revoked as they run,
beats the worker's record in the registry, measures the queues for the metrics (when this worker
does) and prunes idle consumers.

Its jobs run on timers except promotion, which runs when `schedule.py` says a queue's messages
are due. `tick(now)` runs the jobs due at `now`. Between ticks the keeper waits on the queues'
wake streams with a blocking XREAD, where producers announce a delayed message due sooner than
any before it: nothing polls for due messages.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol, TypeVar

from streamtasks.broker import Reclaimed
from streamtasks.errors import BrokerUnavailable, ConfigurationError, StreamTasksError
from streamtasks.keys import QueueKeys
from streamtasks.outcome import Delivery
from streamtasks.registry import BEAT, FIGURES_EVERY, TTL
from streamtasks.retrying import Outage
from streamtasks.runs import Io
from streamtasks.schedule import PromoteSchedule

if TYPE_CHECKING:
    from streamtasks.app import App

log = logging.getLogger(__name__)

T = TypeVar("T")

# The shortest time between two promotions of one queue: a dense run of due times costs a
# promote per gap, not one per message.
PROMOTE_GAP = 0.02
# A blocking read in drain() mode, or once stopping, is short: it must notice soon.
SHORT_BLOCK = 0.05


class Held(Protocol):
    """What the keeper needs of the worker run it keeps."""

    app: App
    name: str
    outage: Outage
    #: The run's queues, by stream key.
    keys: dict[str, QueueKeys]
    block: float
    promote_interval: float
    reclaim_interval: float
    lease_every: float
    prune_idle: float

    def hurried(self) -> bool:
        """Whether waits should be short: the run drains, or is stopping."""
        ...

    def stopping(self) -> bool: ...

    def free_room(self) -> int:
        """How many more entries the run can take."""
        ...

    def reclaim(self, keys: QueueKeys, cursor: str, limit: int) -> Reclaimed:
        """Claim abandoned entries of a queue for the run, from `cursor` on."""
        ...

    def renewable(self) -> list[tuple[QueueKeys, list[Delivery]]]:
        """Held entries whose leases need renewing, by queue."""
        ...

    def stop_revoked(self, io: Io) -> None:
        """Stop the running tasks revoked meanwhile (asking Redis through `io`)."""
        ...

    def beat(self) -> None:
        """Refresh the worker's record in the registry."""
        ...

    def heard(self, renewed: int = 0) -> None:
        """Redis answered a call (which renewed `renewed` leases)."""
        ...

    def measure_queues(self, io: Io) -> None:
        """Measure the queues for the metrics, if this worker is the one that does (asking
        Redis through `io`)."""
        ...


class Keeper:
    """One worker run's keeper. `run()` ticks until `stop` is set; each run has a keeper of its
    own, so one that outlives its run (stuck on a silent connection) touches nothing of the next.
    `now` is time.monotonic() time.
    """

    def __init__(self, held: Held, now: float):
        self.held = held
        self.stop = threading.Event()
        self._schedule = PromoteSchedule(held.keys, fallback=held.promote_interval, gap=PROMOTE_GAP)
        # Each wake stream: where the keeper read up to, and the queue (stream) it belongs to.
        self._wake_after = {k.wake: "0-0" for k in held.keys.values()}
        self._wake_queues = {k.wake: stream for stream, k in held.keys.items()}
        self._cursors: dict[str, str] = {}
        self._failing: set[str] = set()  # queues whose promote fails other than by an outage
        self._every = {
            "promote": held.promote_interval,
            "reclaim": held.reclaim_interval,
            "lease": held.lease_every,
            "revoked": held.reclaim_interval,
            "beat": BEAT,
            "figures": FIGURES_EVERY,
            "prune": 60.0,
        }
        # Each job, given the tick's time; what it returns, if anything: when it runs again.
        self._jobs: dict[str, Callable[[float], float | None]] = {
            "promote": self._promote,
            "reclaim": lambda now: self._reclaim(),
            "lease": lambda now: self._renew_leases(),
            "revoked": lambda now: held.stop_revoked(self._keep),
            "beat": lambda now: self._keep(held.beat),
            "figures": lambda now: held.measure_queues(self._keep),
            "prune": lambda now: self._prune(),
        }
        self._due = {job: now + every for job, every in self._every.items()}
        self._due["promote"] = now  # what came due while no worker ran, at once
        self._due["figures"] = now
        self._backing_off: set[str] = set()  # jobs paused because Redis was unreachable
        self._ticked = now

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            wait = self.tick(now) - (time.monotonic() - now)  # from the end of the tick's jobs
            if self._await_wakes(wait):
                self.announced(time.monotonic())

    def tick(self, now: float) -> float:
        """Run the jobs due at `now`; the seconds until the next one is."""
        if now - self._ticked > TTL:
            # Paused (SIGSTOP, a frozen VM) for longer than a record lives: its name may be
            # another worker's now. The beat says so before any other job acts on it.
            self._due["beat"] = now + self._attempt("beat", now)
        self._ticked = now
        if self._backing_off and not self.held.outage.down:
            # Redis answers again: what paused during the outage runs now, not after its pause.
            for job in self._backing_off:
                self._due[job] = now
            self._backing_off.clear()
        for job, at in self._due.items():
            if now >= at:
                self._due[job] = now + self._attempt(job, now)
        return min(self._due.values()) - now

    def announced(self, now: float) -> None:
        """A producer announced a delayed message due sooner than any before it."""
        at = now + self._schedule.wait(now, self._now_ms())
        self._due["promote"] = min(self._due["promote"], at)

    def _attempt(self, job: str, now: float) -> float:
        """Run one job; the seconds until it runs again: its own say, else its interval, and
        longer while Redis is unreachable (it is then backing off)."""
        every = self._every[job]
        try:
            after = self._jobs[job](now)
        except ConfigurationError:
            raise  # e.g. credentials refused: waiting will not help; stop the worker
        except BrokerUnavailable as exc:
            self.held.outage.failed(exc)
            self._backing_off.add(job)
            return min(5.0, 4 * every)
        except Exception:
            log.exception("worker %s: %s failed; will try again", self.held.name, job)
            after = None
        self._backing_off.discard(job)
        return every if after is None else after

    def _keep(self, call: Callable[[], T]) -> T:
        """A Redis call: the loop logs a failure; a success after one ends the outage."""
        result = call()
        self.held.heard()
        if self.held.outage.down:
            self.held.outage.recovered()
        return result

    def _now_ms(self) -> int:
        return int(self.held.app.clock() * 1000)

    # -- waiting for wake-ups ------------------------------------------------------------

    def _await_wakes(self, seconds: float) -> bool:
        """Wait up to `seconds` (at most one read's block) on the queues' wake streams; True if a
        producer announced a delayed message due sooner than any before it."""
        w = self.held
        seconds = min(seconds, SHORT_BLOCK if w.hurried() else w.block)
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
        w = self.held
        try:
            spoiled = w.app.broker.not_streams(list(self._wake_after))
        except StreamTasksError:
            return False
        for key in spoiled:
            log.warning(
                "%s holds something other than a stream; delayed messages of %s are promoted "
                "every %.1fs instead of when due until it is deleted and the worker restarted",
                key,
                w.keys[self._wake_queues[key]].queue,
                w.promote_interval,
                extra={"worker": w.name, "key": key},
            )
            del self._wake_after[key]
        return bool(spoiled)

    # -- the jobs --------------------------------------------------------------------------

    def _promote(self, now: float) -> float:
        """Promote the queues whose delayed messages are due; the seconds until more are. A queue
        whose promote fails (its keys spoiled by someone else) holds up none of the others."""
        w = self.held
        now_ms = self._now_ms()
        for stream in self._schedule.due(now, now_ms):
            keys = w.keys[stream]
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
        return self._schedule.wait(now, self._now_ms())

    def _reclaim(self) -> None:
        w = self.held
        if w.stopping():
            return
        for keys in w.keys.values():
            room = w.free_room()
            if room <= 0:
                return
            cursor = self._cursors.get(keys.stream, "-")
            found = self._keep(partial(w.reclaim, keys, cursor, room))
            self._cursors[keys.stream] = found.cursor

    def _renew_leases(self) -> None:
        w = self.held
        for keys, group in w.renewable():
            ids = [d.entry_id for d in group]
            lost = self._keep(partial(w.app.broker.lease, keys, w.name, ids, hand_back=False))
            w.heard(renewed=len(ids) - len(lost))
            for d in group:
                if d.entry_id in lost:
                    log.warning(
                        "%s[%s] was taken over by another worker while held here",
                        d.task_name,
                        d.task_id,
                        extra={"task_id": d.task_id},
                    )

    def _prune(self) -> None:
        w = self.held
        idle_ms = int(w.prune_idle * 1000)
        for keys in w.keys.values():
            removed = self._keep(partial(w.app.broker.prune, keys, w.name, idle_ms))
            if removed:
                log.info("removed %d idle consumers from %s", removed, keys.queue)
