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
