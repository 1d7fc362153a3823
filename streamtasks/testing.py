"""Testing helpers: a clock a test moves by hand, and a runner that runs an app's queued tasks
one at a time in the calling thread, through the same fetch, run, decide and settle steps (the
same Lua scripts) as a worker. The pytest plugin (`streamtasks` fixture) is built on these.
Time limits are not applied here: a task runs to its end in the caller's thread (a test that
wants to see one raise SoftTimeLimitExceeded raises it from a fake the task calls).

    clock = ManualClock()
    app = App("shop", url="memory://", clock=clock)
    runner = Runner(app)
    place_order.delay("o-1")
    runner.drain()                  # runs it, and what it enqueues, and retries as they come due
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import redis

from streamtasks.broker import HANDED_BACK_IDLE_MS, Entry, Reclaimed
from streamtasks.connection import fakeredis_module, fresh_memory, reset_memory
from streamtasks.errors import DecodeError, StreamTasksError
from streamtasks.keys import QueueKeys
from streamtasks.message import decode
from streamtasks.outcome import Delivery, Settle, skipped
from streamtasks.policy import DeadLetter, Revoked
from streamtasks.protocol import REFUSED
from streamtasks.retrying import Outage
from streamtasks.runs import (
    aexecute,
    begin,
    context_of,
    execute,
    expired,
    not_run,
    reclaim,
    report_buried,
    visibility_timeouts,
)

if TYPE_CHECKING:
    from streamtasks.app import App
    from streamtasks.task import Task

__all__ = ["Enqueued", "Harness", "ManualClock", "Ran", "Runner"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A fixed starting time for manual clocks: whole seconds, so due times in ms are exact.
EPOCH = 1_700_000_000.0
# The consumer a lease-expiry fault hands an entry to, as if another worker had reclaimed it.
_OTHER_WORKER = "streamtasks-testing-other-worker"


class ManualClock:
    """A wall clock that moves only when told to (pass it as ``App(clock=...)``)."""

    def __init__(self, now: float = EPOCH):
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def set(self, now: float) -> None:
        with self._lock:
            self.now = now


class Ran(NamedTuple):
    """One run the runner made: which task, its id, which attempt, and how it ended: SUCCESS,
    FAILURE, RETRY, DEAD; SKIPPED (its idempotency key was done already); KILLED (it died as its
    worker would); REFUSED (another worker had taken it over, so its outcome was not applied)."""

    task: str
    id: str
    queue: str
    attempt: int
    status: str


@dataclass(frozen=True)
class Enqueued:
    """A call waiting in a queue: due now (`due` None) or at `due`; `attempt` 1 for a first run."""

    task: str
    id: str
    queue: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempt: int
    due: dt.datetime | None = None


class Runner:
    """Runs the queued tasks of `app` in this thread, one at a time, under one consumer name.

    `drain()` first takes back what this consumer held when a run of it died (as a restarted
    worker does), then runs everything due, moving the app's clock to each delayed task's due
    time when `advance` is true (the app's clock must then be a ManualClock).
    """

    def __init__(self, app: App, queues: Iterable[str] | None = None, name: str = "test-worker"):
        self.app = app
        self.name = name
        self._queues = [app.check_queue(q) for q in queues] if queues else None
        self._kill: list[str | None] = []
        self._expire: list[str | None] = []
        self._told: collections.deque[Ran] = collections.deque()  # dead letters not yet returned
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- faults ----------------------------------------------------------------------------

    def kill_next(self, task: Task[Any, Any] | str | None = None) -> None:
        """The next run of `task` (of any task, if None) dies as its worker would if killed
        after the task's work but before its ack: nothing is recorded, the entry stays pending,
        and the next `drain()` runs it again as a redelivery (its delivery count goes up, so
        max_deliveries applies)."""
        self._kill.append(_name(task))

    def expire_lease_next(self, task: Task[Any, Any] | str | None = None) -> None:
        """The next run of `task` loses its lease while it runs: another worker takes the entry
        over, so this run's outcome is refused (fenced) and the entry runs again."""
        self._expire.append(_name(task))

    # -- running ---------------------------------------------------------------------------

    def drain(self, *, advance: bool = True, max_runs: int = 10_000) -> list[Ran]:
        """Run until nothing is due (nothing at all, with `advance`); the runs made, in order,
        with a DEAD one for each entry dead-lettered because a worker died on every delivery."""
        ran = self._recover()
        while True:
            one = self.run_one(reclaim=False)
            if one is None:
                due = self._next_due() if advance else None
                if due is None:
                    return ran
                self._clock().set(max(self._clock()(), due / 1000))
                continue
            ran.append(one)
            if len(ran) >= max_runs:
                raise StreamTasksError(
                    f"still running after {max_runs} runs: does a task enqueue itself forever?"
                )

    def run_one(self, *, reclaim: bool = True) -> Ran | None:
        """Promote what is due, then run one entry: one this consumer held when a run of it died
        (with `reclaim`), one another worker abandoned, or a new one; None if there is none."""
        if self._told:
            return self._told.popleft()
        now_ms = int(self.app.clock() * 1000)
        queues = self._keys()
        for keys in queues:
            self.app.redis_call(partial(self.app.broker.ensure_group, keys))
            self.app.redis_call(partial(self.app.broker.promote, keys, now_ms))
        for keys in queues:
            found = self._reclaim(keys, own=reclaim, cursor="-", limit=1)
            if found.entries:
                return self._run(keys, found.entries[0])
            if self._told:
                return self._told.popleft()
        for batch in self.app.redis_call(partial(self.app.broker.read, queues, self.name, 1, None)):
            keys = next(k for k in queues if k.stream == batch.stream)
            return self._run(keys, batch.entries[0])
        return None

    # -- looking -------------------------------------------------------------------------

    def enqueued(
        self, task: Task[Any, Any] | str | None = None, queue: str | None = None
    ) -> list[Enqueued]:
        """The calls waiting in the runner's queues (only `task`'s, only `queue`'s if given):
        due now first, in order, then delayed ones by due time."""
        wanted = _name(task)
        found: list[Enqueued] = []
        for keys in self._keys():
            if queue is not None and keys.queue != queue:
                continue
            now = [
                (None, fields)
                for _, fields in self.app.redis_call(partial(self.app.broker.waiting, keys))
            ]
            for due_ms, fields in [
                *now,
                *self.app.redis_call(partial(self.app.broker.delayed, keys)),
            ]:
                try:
                    m = decode(fields, self.app.codec)
                except DecodeError:
                    continue  # garbage is no call; a run dead-letters it
                if wanted is None or m.task == wanted:
                    due = None
                    if due_ms is not None:
                        due = dt.datetime.fromtimestamp(due_ms / 1000, dt.timezone.utc)
                    found.append(
                        Enqueued(m.task, m.id, keys.queue, m.args, dict(m.kwargs), m.attempt, due)
                    )
        return found

    # -- inside ----------------------------------------------------------------------------

    def _clock(self) -> ManualClock:
        clock = self.app.clock
        if not isinstance(clock, ManualClock):
            raise StreamTasksError(
                "drain(advance=True) moves the app's clock to delayed tasks' due times: give the "
                "app a streamtasks.testing.ManualClock, or drain(advance=False)"
            )
        return clock

    def _keys(self) -> list[QueueKeys]:
        """The queues to run: those given, else every queue the app knows of now."""
        names = self._queues or self.app.known_queues
        return [self.app.keys(q) for q in names]

    def _next_due(self) -> int | None:
        now_ms = int(self.app.clock() * 1000)
        dues = [
            self.app.redis_call(partial(self.app.broker.promote, k, now_ms))[1]
            for k in self._keys()
        ]
        known = [d for d in dues if d is not None]
        return min(known) if known else None

    def _recover(self) -> list[Ran]:
        """One pass over what this consumer held: a run killed now waits for the next drain."""
        ran: list[Ran] = []
        for keys in self._keys():
            self.app.redis_call(partial(self.app.broker.ensure_group, keys))
            cursor = "-"
            while True:
                found = self._reclaim(keys, own=True, cursor=cursor, limit=100)
                ran.extend(self._told)
                self._told.clear()
                ran.extend(self._run(keys, entry) for entry in found.entries)
                cursor = found.cursor
                if cursor == "-":
                    break
        return ran

    def _reclaim(self, keys: QueueKeys, *, own: bool, cursor: str, limit: int) -> Reclaimed:
        timeouts = visibility_timeouts(self.app)
        found = self.app.redis_call(
            lambda: reclaim(
                self.app, keys, self.name, timeouts, cursor=cursor, own=own, limit=limit
            )
        )
        for buried in found.dead:
            report_buried(buried, keys.queue, worker=self.name)
            self._told.append(Ran(buried.task, buried.task_id, keys.queue, buried.attempt, "DEAD"))
        return found

    def _run(self, keys: QueueKeys, entry: Entry) -> Ran:
        app = self.app
        d = Delivery.parse(keys, entry[0], entry[1], app.tasks, app.codec)
        if d.problem is not None:
            return self._settle(not_run(d, DeadLetter(d.problem), app, self.name))
        assert d.message is not None
        late = expired(d, app.clock())
        if late is None and self.app.redis_call(
            partial(app.broker.revoked_among, keys, [d.task_id])
        ):
            late = Revoked("revoked before it started")
        if late is not None:
            return self._settle(not_run(d, late, app, self.name))
        key = d.message.idempotency_key
        claim = [(keys.idempotency(key), d.task_id)] if key is not None else []
        if claim and app.redis_call(partial(app.broker.done_flags, claim))[0]:
            return self._settle(skipped(d))
        d.started = True
        if not begin(d, app, self.name, app.redis_call):
            return _ran(d, "REFUSED")
        kill, expire = self._armed(self._kill, d), self._armed(self._expire, d)
        run = aexecute if d.is_async else execute
        settle, _ = self._finish(
            run(
                d,
                app,
                worker=self.name,
                context=partial(context_of, d, self.name, app),
                log_success=log.isEnabledFor(logging.INFO),
            )
        )
        if kill:
            log.warning(
                "%s[%s] killed after its work and before its ack, as asked",
                d.task_name,
                d.task_id,
            )
            return _ran(d, "KILLED")
        if expire:
            lost = [d.entry_id]
            self.app.redis_call(
                partial(app.broker.take_over, keys, _OTHER_WORKER, lost, HANDED_BACK_IDLE_MS)
            )
        return self._settle(settle)

    def _finish(self, run: Any) -> tuple[Settle, float]:
        """A run's result: at once for a plain task; an async one is run to its end on the
        runner's own event loop, kept from run to run like a worker's."""
        if not asyncio.iscoroutine(run):
            return run  # type: ignore[no-any-return]
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(run)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the event loop async tasks ran on, if any did."""
        if self._loop is not None:
            self._loop.run_until_complete(self.app.aclose())
            self._loop.close()
            self._loop = None

    def _armed(self, faults: list[str | None], d: Delivery) -> bool:
        for i, name in enumerate(faults):
            if name is None or name == d.task_name:
                del faults[i]
                return True
        return False

    def _settle(self, settle: Settle) -> Ran:
        d = settle.delivery
        (code,) = self.app.redis_call(
            partial(
                self.app.broker.settle,
                d.keys,
                self.name,
                [settle.record],
                minute=int(self.app.clock() // 60),
            )
        )
        if code == REFUSED:
            log.warning(
                "%s[%s] finished as %s but another worker took it over meanwhile; its outcome "
                "was not applied",
                d.task_name,
                d.task_id,
                settle.status,
            )
            return _ran(d, "REFUSED")
        return _ran(d, settle.status)


class Harness:
    """`app` moved onto a fresh in-memory Redis of its own and a ManualClock set to now, with a
    Runner and faults to inject, until `close()` puts it back; the pytest fixture `streamtasks`.
    The app's real Redis is never touched meanwhile."""

    def __init__(self, app: App):
        self.app = app
        self._saved = (app.url, app.clock, app.outage)
        self._name = f"streamtasks-test-{os.urandom(6).hex()}"
        self._down = _Countdown()
        fresh_memory(self._name, _faulty_connection(self._down))
        app.close()
        app.url = f"memory://{self._name}"
        self.clock = ManualClock(time.time())
        app.clock = self.clock
        # An outage of its own, waited out on this clock: redis_down() costs no real time, and
        # nothing of it is left for the next test.
        app.outage = Outage(f"app {app.name}", clock=self.clock, sleep=self.clock.advance)
        self.runner = Runner(app)

    def drain(self, *, advance: bool = True, max_runs: int = 10_000) -> list[Ran]:
        """Run everything queued, and what it enqueues, and retries and delayed tasks as they
        come due, moving the clock to each due time without sleeping (`advance=False`: only
        what is due now); the runs made, in order."""
        return self.runner.drain(advance=advance, max_runs=max_runs)

    def enqueued(
        self, task: Task[Any, Any] | str | None = None, queue: str | None = None
    ) -> list[Enqueued]:
        """The calls waiting to run, of one task or queue if given."""
        return self.runner.enqueued(task, queue)

    def advance(self, seconds: float) -> None:
        """Move the clock on; what comes due runs at the next drain()."""
        self.clock.advance(seconds)

    def kill_next(self, task: Task[Any, Any] | str | None = None) -> None:
        """The next run of `task` dies as a killed worker's would (see Runner.kill_next)."""
        self.runner.kill_next(task)

    def expire_lease_next(self, task: Task[Any, Any] | str | None = None) -> None:
        """The next run of `task` loses its lease while running (see Runner.expire_lease_next)."""
        self.runner.expire_lease_next(task)

    def redis_down(self, calls: int = 1) -> None:
        """The next `calls` round trips to Redis fail as if it were unreachable. Producers and
        drain() ride them out as a real outage, retrying with backoff on the test's clock (no
        real time passes), and raise BrokerUnavailable once enqueue_timeout has passed on it."""
        self._down.set(calls)

    def close(self) -> None:
        self.runner.close()
        self.app.close()
        self.app.url, self.app.clock, self.app.outage = self._saved
        reset_memory(self._name)


class _Countdown:
    """How many more round trips fail."""

    def __init__(self) -> None:
        self._left = 0
        self._lock = threading.Lock()

    def set(self, n: int) -> None:
        with self._lock:
            self._left = n

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


def _faulty_connection(down: _Countdown) -> type:
    """A fakeredis connection class whose round trips fail while `down` counts."""

    class FaultyConnection(fakeredis_module().FakeRedisConnection):  # type: ignore[misc]
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if down.take():
                self.disconnect()
                raise redis.ConnectionError("Redis is down (streamtasks.testing redis_down)")
            super().send_packed_command(command, check_health)

    return FaultyConnection


def _ran(d: Delivery, status: str) -> Ran:
    return Ran(d.task_name, d.task_id, d.keys.queue, d.attempt, status)


def _name(task: Task[Any, Any] | str | None) -> str | None:
    return task if task is None or isinstance(task, str) else task.name
