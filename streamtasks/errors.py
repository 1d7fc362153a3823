"""The exception tree of streamtasks; every error the library raises is one of these.

::

    StreamTasksError
    ├── ConfigurationError      a bad URL, app or queue name, or task option
    ├── EncodeError (TypeError) arguments msgpack cannot encode, or a message too large
    ├── DecodeError             a stream entry that is not a valid streamtasks message
    ├── BrokerUnavailable       Redis could not be reached (after retrying with backoff)
    ├── IdempotencyConflict     an idempotency key already names a different call
    ├── TaskError               the task ran and failed, or was dead-lettered
    │   └── TaskRevoked         the task was revoked, or expired, before it ran
    ├── TimeoutError            AsyncResult.get() waited longer than its timeout
    ├── SoftTimeLimitExceeded   raised inside a task at its soft_time_limit (it may clean up)
    ├── TimeLimitExceeded       how a run ended that its time_limit stopped
    └── TaskControl             raised inside a task to steer what happens next
        ├── Retry               run again later (counts against max_retries)
        └── Reject              give up now: move the message to the dead-letter stream

Exceptions from redis-py are translated into these in `streamtasks.broker`, the only module that
speaks to Redis, so none leaks from the public API.
"""

from __future__ import annotations

import builtins


class StreamTasksError(Exception):
    """Root of every exception streamtasks raises."""


class ConfigurationError(StreamTasksError, ValueError):
    """A URL, name or option that cannot work."""


class EncodeError(StreamTasksError, TypeError):
    """The call's arguments cannot be put in a message; nothing was enqueued."""


class DecodeError(StreamTasksError):
    """A stream entry is not a message this version of streamtasks can run."""


class BrokerUnavailable(StreamTasksError, builtins.ConnectionError):
    """Redis did not answer, even after retrying with backoff."""


class IdempotencyConflict(StreamTasksError):
    """An enqueue reused an idempotency key that already names a different call (another task,
    or other arguments); nothing was enqueued. `key` is the key, `task_id` the first task's id."""

    def __init__(self, key: str, task_id: str):
        super().__init__(
            f"idempotency key {key!r} already names task {task_id}, a different call (another "
            "task or other arguments); nothing was enqueued. A key stands for one call: give "
            "this call a key of its own"
        )
        self.key = key
        self.task_id = task_id


class TaskError(StreamTasksError):
    """The task failed remotely; carries the remote exception's type name, message and traceback."""

    def __init__(self, type_name: str, message: str, traceback: str, status: str = "FAILURE"):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.status = status


class TaskRevoked(TaskError):
    """The task was revoked (`AsyncResult.revoke`), or its `expires` passed, before it started;
    or, raised by a running task that saw `current_task().revoked`, it stopped on request."""

    def __init__(self, message: str = "revoked while it ran"):
        super().__init__("TaskRevoked", message, "", "REVOKED")


class TimeoutError(StreamTasksError, builtins.TimeoutError):
    """The result was not ready within the timeout."""


class SoftTimeLimitExceeded(StreamTasksError):
    """Raised inside a running task at its `soft_time_limit` (or, if it has one, when it is
    revoked while it runs): the task may catch it to clean up. In an `async def` task it arrives
    at the `await` the task waits at; in a plain task, at the next line of Python it runs (a call
    blocked in C, such as a socket read, sees it when it returns)."""

    def __init__(self, message: str = "the task ran past its soft time limit"):
        super().__init__(message)


class TimeLimitExceeded(StreamTasksError):
    """How a run ended that ran past its `time_limit`: the worker stopped waiting for it (an
    `async def` task is cancelled; the thread of a plain one is given up on and replaced) and
    decided it as this exception, retried if it is in `autoretry_for`, else a FAILURE."""


class TaskControl(StreamTasksError):
    """Base of the exceptions a task raises on purpose to choose its outcome."""


class Retry(TaskControl):
    """Raise inside a task to run it again later.

    ``countdown`` overrides the task's backoff for this retry, in seconds.
    """

    def __init__(self, countdown: float | None = None, reason: str = ""):
        if countdown is not None and not (
            isinstance(countdown, int | float) and 0 <= countdown < float("inf")
        ):
            raise ValueError(f"Retry countdown must be a finite number >= 0, not {countdown!r}")
        super().__init__(reason or "retry requested")
        self.countdown = countdown
        self.reason = reason


class Reject(TaskControl):
    """Raise inside a task to dead-letter its message at once, with a reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
