"""One run of a delivered task in this thread: call it, decide its outcome, and say how it ended.

The threaded worker and `streamtasks.testing` both run tasks through `execute`, so a run logs the
same lines wherever it happens: INFO for a success (when the caller asks), WARNING for a retry
with when the next attempt runs, ERROR with the traceback for a failure or a dead letter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from streamtasks.broker import Buried, Reclaimed
from streamtasks.context import TaskContext, enter, leave
from streamtasks.errors import SoftTimeLimitExceeded, TaskRevoked, TimeLimitExceeded
from streamtasks.keys import QueueKeys
from streamtasks.limits import ThreadRun
from streamtasks.outcome import Delivery, Settle, early_ack, record_for
from streamtasks.policy import DeadLetter, ErrorInfo, Failed, RetryLater, Revoked, decide
from streamtasks.protocol import SETTLED

if TYPE_CHECKING:
    from streamtasks.app import App

log = logging.getLogger(__name__)

T = TypeVar("T")


def visibility_timeouts(app: App) -> dict[str, int]:
    """The tasks whose visibility timeout is their own, and it, in ms."""
    return {
        t.name: int(t.options.visibility_timeout * 1000)
        for t in app.tasks.values()
        if t.options.visibility_timeout is not None
    }


def reclaim(
    app: App,
    keys: QueueKeys,
    consumer: str,
    timeouts_ms: dict[str, int],
    *,
    cursor: str,
    own: bool,
    limit: int | None,
) -> Reclaimed:
    """Claim a queue's abandoned entries for `consumer` with the app's settings (`own`: its own
    too, whatever their idle time); see Broker.reclaim."""
    return app.broker.reclaim(
        keys,
        consumer,
        cursor=cursor,
        count=100,
        max_deliveries=app.max_deliveries,
        default_timeout_ms=int(app.visibility_timeout * 1000),
        timeouts_ms=timeouts_ms,
        own=own,
        now_ms=int(app.clock() * 1000),
        result_ttl_ms=int(app.result_ttl * 1000),
        limit=limit,
    )


def context_of(d: Delivery, worker: str, app: App, watched: bool = False) -> TaskContext:
    """What `current_task()` says inside the run of `d`. `.revoked` asks Redis, or, when the
    worker `watched` for revocations of what it runs, says what it found."""
    retries = d.options.retry.max_retries if d.options else 0
    key, ttl_ms = d.keys.progress(d.task_id), int(app.result_ttl * 1000)

    def progress(value: Any) -> None:
        data = app.codec.pack(value, root="the progress")
        app.redis_call(lambda: app.broker.set_progress(key, data, ttl_ms))

    async def aprogress(value: Any) -> None:
        data = app.codec.pack(value, root="the progress")
        await app.aredis_call(lambda: app.abroker.set_progress(key, data, ttl_ms))

    def asked() -> bool:
        return bool(app.redis_call(lambda: app.broker.revoked_among(d.keys, [d.task_id])))

    return TaskContext(
        id=d.task_id,
        name=d.task_name,
        queue=d.keys.queue,
        attempt=d.attempt,
        retries_left=max(0, retries + 1 - d.attempt),
        idempotency_key=d.message.idempotency_key if d.message else None,
        headers=d.message.headers if d.message else {},
        worker=worker,
        _progress=progress,
        _revoked=(lambda: d.revoked) if watched else asked,
        _aprogress=aprogress,
    )


class Io(Protocol):
    """Makes one Redis call, riding out outages as its caller's policy says."""

    def __call__(self, call: Callable[[], T], /) -> T: ...


def expired(d: Delivery, now: float) -> Revoked | None:
    """Revoked, if the task's `expires` has passed at `now` and it must not start."""
    expires_ms = d.message.expires_ms if d.message is not None else None
    if expires_ms is None or now * 1000 < expires_ms:
        return None
    when = dt.datetime.fromtimestamp(expires_ms / 1000, dt.timezone.utc)
    return Revoked(f"expired at {when.isoformat(timespec='milliseconds')} before it started")


def not_run(d: Delivery, outcome: DeadLetter | Revoked, app: App, worker: str) -> Settle:
    """The record that settles an entry that is not run (it cannot be, or must not be), logged
    as a run that ended so would be."""
    now = app.clock()
    settle = record_for(
        d,
        outcome,
        codec=app.codec,
        worker=worker,
        now=now,
        result_ttl=app.result_ttl,
        idempotency_ttl=app.idempotency_ttl,
    )
    report(settle, 0.0, worker=worker, now=now)
    return settle


def begins_plainly(d: Delivery) -> bool:
    """Whether `begin` has nothing to do for `d`: acked late, no STARTED status to write."""
    options = d.options
    return options is None or (options.acks_late and not options.track_started)


def begin(d: Delivery, app: App, worker: str, io: Io) -> bool:
    """What comes before a run: the ack of a task acked on receipt (False: another worker owns
    the entry now, so it must not run here) and the STARTED status of one that tracks it."""
    options = d.options
    assert options is not None
    if not options.acks_late:
        minute = int(app.clock() // 60)
        (acked,) = io(partial(app.broker.settle, d.keys, worker, [early_ack(d)], minute=minute))
        if acked != SETTLED:
            log.warning(
                "%s[%s] was taken over by another worker before it started; not run here",
                d.task_name,
                d.task_id,
                extra={"task_id": d.task_id, "worker": worker},
            )
            return False
        d.acked_early = True
    if options.track_started and not options.ignore_result:
        key, ttl_ms = d.keys.result(d.task_id), int(app.result_ttl * 1000)
        io(partial(app.broker.write_status, key, "STARTED", ttl_ms))
    return True


def execute(
    d: Delivery,
    app: App,
    *,
    worker: str,
    context: Callable[[], TaskContext],
    log_success: bool,
    limit: Callable[[ThreadRun], Callable[[], None]] | None = None,
) -> tuple[Settle | None, float]:
    """Run the task behind `d` (decoded, registered) in this thread; its settle record and the
    seconds it took. With `limit` (the run has time limits), the run's ThreadRun is handed to it
    as the task starts, and what it returns disarms them as the task ends; the record is then
    None if the worker gave up on the run meanwhile: its outcome was decided without it."""
    message, task = d.message, d.task
    assert message is not None and task is not None
    token = enter(context)
    began = time.perf_counter()
    thread: ThreadRun | None = None
    disarm: Callable[[], None] | None = None
    given_up = False
    try:
        try:
            if limit is not None:
                # From here until `end`, and only then, an exception may be raised in this
                # thread: both ends of that window lie inside these try blocks.
                thread = ThreadRun()
                disarm = limit(thread)
            value, exc = task.fn(*message.args, **message.kwargs), None
        except BaseException as error:  # even SystemExit: a task never takes its worker down
            value, exc = None, error
    finally:
        while thread is not None:
            try:
                given_up = thread.end()
                break
            except (SoftTimeLimitExceeded, TimeLimitExceeded):
                continue  # raised as the task ended: one each at most, and none after `end`
        if disarm is not None:
            disarm()
        leave(token)
    took = time.perf_counter() - began
    if given_up:
        return None, took
    return finish(d, app, value, exc, took, worker=worker, log_success=log_success), took


async def aexecute(
    d: Delivery,
    app: App,
    *,
    worker: str,
    context: Callable[[], TaskContext],
    log_success: bool,
    cancelled_here: Callable[[], bool] = lambda: False,
    watch: Callable[[Coroutine[Any, Any, Any]], Awaitable[Any]] | None = None,
) -> tuple[Settle, float]:
    """`execute` for an `async def` task, awaited on the running event loop. Its context is its
    own asyncio task's, so current_task() answers for it alone. A CancelledError is the worker
    giving the entry back (or giving up on the run) when `cancelled_here()` says so, and
    re-raised; one the task raised itself, or a revocation's, is its outcome. `watch` wraps the
    task's coroutine before it is awaited (see limits.Interruptible)."""
    message, task = d.message, d.task
    assert message is not None and task is not None
    token = enter(context)
    began = time.perf_counter()
    exc: BaseException | None = None
    try:
        coro = task.fn(*message.args, **message.kwargs)
        value = await (coro if watch is None else watch(coro))
    except asyncio.CancelledError as error:
        if cancelled_here():
            raise  # the worker is giving the entry back: not an outcome of the task
        value, exc = None, error
    except BaseException as error:  # a task never takes its worker down
        value, exc = None, error
    finally:
        leave(token)
    took = time.perf_counter() - began
    return finish(d, app, value, exc, took, worker=worker, log_success=log_success), took


def finish(
    d: Delivery,
    app: App,
    value: Any,
    exc: BaseException | None,
    took: float,
    *,
    worker: str,
    log_success: bool,
) -> Settle:
    """Decide how a run that returned `value` or raised `exc` ends, log it, and build the
    record that settles it."""
    task, message = d.task, d.message
    assert task is not None and message is not None
    now = app.clock()
    if exc is not None and d.revoked and not isinstance(exc, TaskRevoked):
        exc = TaskRevoked("revoked while it ran")  # however it ended, it is not retried
    try:
        settle = record_for(
            d,
            decide(task.options.retry, message.attempt, exc, value),
            codec=app.codec,
            worker=worker,
            now=now,
            result_ttl=app.result_ttl,
            idempotency_ttl=app.idempotency_ttl,
        )
    except Exception as error:  # an outcome that cannot be applied is the task's failure
        exc = error
        settle = record_for(
            d,
            Failed(ErrorInfo.of(error)),
            codec=app.codec,
            worker=worker,
            now=now,
            result_ttl=app.result_ttl,
            idempotency_ttl=app.idempotency_ttl,
        )
    if settle.error is not None or log_success:
        report(settle, took, worker=worker, now=now, exc=exc)
    return settle


def report(
    settle: Settle,
    took: float,
    *,
    worker: str,
    now: float,
    exc: BaseException | None = None,
) -> None:
    """Log how a run ended: one line, with the traceback for a failure or a dead letter."""
    d, outcome = settle.delivery, settle.outcome
    extra = {
        "task_id": d.task_id,
        "task": d.task_name,
        "queue": d.keys.queue,
        "attempt": d.attempt,
        "outcome": settle.status,
        "seconds": took,
        "worker": worker,
    }
    if isinstance(outcome, Revoked):
        ended = "stopped" if outcome.ran else "not run"
        log.info("%s[%s] %s: %s", d.task_name, d.task_id, ended, outcome.reason, extra=extra)
        return
    if isinstance(outcome, RetryLater):
        retry = d.options.retry if d.options is not None else None
        most = "" if retry is None else f"/{retry.max_retries + 1}"
        log.warning(
            "%s[%s] attempt %d%s raised %s: %s; attempt %d runs in %.1fs, at %s",
            d.task_name,
            d.task_id,
            d.attempt,
            most,
            outcome.error.type_name,
            outcome.error.message,
            d.attempt + 1,
            outcome.delay,
            _iso(now + outcome.delay),
            extra=extra,
        )
    elif isinstance(outcome, Failed | DeadLetter):
        ended = "dead-lettered" if isinstance(outcome, DeadLetter) else "failed"
        error = outcome.error
        # The exception itself where there is one (error trackers read exc_info), else the
        # traceback text the outcome carries, if any.
        text = "\n%s" if exc is None and error.traceback else "%s"
        log.error(
            "%s[%s] %s on attempt %d after %.4fs: %s: %s" + text,
            d.task_name,
            d.task_id,
            ended,
            d.attempt,
            took,
            error.type_name,
            error.message,
            error.traceback.rstrip() if exc is None else "",
            exc_info=exc,
            extra={**extra, "traceback": error.traceback},
        )
    else:
        log.info("%s[%s] %s in %.4fs", d.task_name, d.task_id, settle.status, took, extra=extra)


def report_buried(buried: Buried, queue: str, *, worker: str) -> None:
    """Log an entry reclaim dead-lettered after a worker died on each of its deliveries."""
    log.error(
        "%s[%s] dead-lettered on attempt %d: delivered %d times without finishing; a worker "
        "died on each (MaxDeliveriesExceeded)",
        buried.task,
        buried.task_id,
        buried.attempt,
        buried.deliveries,
        extra={
            "task_id": buried.task_id,
            "task": buried.task,
            "queue": queue,
            "attempt": buried.attempt,
            "outcome": "DEAD",
            "worker": worker,
        },
    )


def _iso(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
