"""One run of a delivered task in this thread: call it, decide its outcome, and say how it ended.

The threaded worker and `streamtasks.testing` both run tasks through `execute`, so a run logs the
same lines wherever it happens: INFO for a success (when the caller asks), WARNING for a retry
with when the next attempt runs, ERROR with the traceback for a failure or a dead letter.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from streamtasks.context import TaskContext, _current
from streamtasks.outcome import Delivery, Settle, record_for
from streamtasks.policy import DeadLetter, ErrorInfo, Failed, RetryLater, decide

if TYPE_CHECKING:
    from streamtasks.app import App

log = logging.getLogger(__name__)


def execute(
    d: Delivery,
    app: App,
    *,
    worker: str,
    context: Callable[[], TaskContext],
    log_success: bool,
) -> tuple[Settle, float]:
    """Run the task behind `d` (decoded, registered); its settle record and seconds taken."""
    message, task = d.message, d.task
    assert message is not None and task is not None
    token = _current.set(context)
    began = time.perf_counter()
    try:
        value, exc = task.fn(*message.args, **message.kwargs), None
    except BaseException as error:  # even SystemExit: a task never takes its worker down
        value, exc = None, error
    finally:
        _current.reset(token)
    took = time.perf_counter() - began
    now = app.clock()
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
    return settle, took


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


def _iso(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
