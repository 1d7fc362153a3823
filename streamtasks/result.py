"""AsyncResult: the handle `.delay()` returns, waiting on the task's result stream (no polling)."""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from streamtasks import retrying
from streamtasks.broker import Entry
from streamtasks.connection import MAX_BLOCK
from streamtasks.errors import StreamTasksError, TaskError, TaskRevoked, TimeoutError
from streamtasks.keys import QueueKeys

if TYPE_CHECKING:
    from streamtasks.app import App

R = TypeVar("R")

PENDING, STARTED, RETRY = "PENDING", "STARTED", "RETRY"
SUCCESS, FAILURE, DEAD, REVOKED = "SUCCESS", "FAILURE", "DEAD", "REVOKED"
READY_STATES = frozenset({SUCCESS, FAILURE, DEAD, REVOKED})

# Longest single blocking read: a dropped connection is noticed at least this often.
_MAX_BLOCK_MS = int(MAX_BLOCK * 1000)


def _block_ms(left: float | None) -> int | None:
    """How long one read of a result waits: at most 5 s at a time and never past the caller's
    deadline; with no time left it does not wait but still looks, so get(timeout=0) returns a
    result that is already there."""
    if left is not None and left <= 0:
        return None
    return _MAX_BLOCK_MS if left is None else max(1, min(_MAX_BLOCK_MS, int(left * 1000)))


class AsyncResult(Generic[R]):
    """The state and eventual value of one task run."""

    def __init__(self, app: App, id: str, queue: str | QueueKeys, *, ignore_result: bool = False):
        keys = app.keys(queue) if isinstance(queue, str) else queue
        self.app = app
        self.id = id
        self.queue = keys.queue
        self.ignore_result = ignore_result
        self._keys = keys
        self._key = keys.result(id)

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} queue={self.queue}>"

    @property
    def status(self) -> str:
        """PENDING, STARTED, RETRY, SUCCESS, FAILURE, DEAD or REVOKED."""
        fields = self.app.redis_call(lambda: self.app.broker.result_last(self._key))
        return PENDING if fields is None else fields[b"status"].decode()

    def ready(self) -> bool:
        return self.status in READY_STATES

    def revoke(self) -> None:
        """Make sure the task never starts. Kept in Redis for result_ttl, so it outlives worker
        restarts: a worker that meets the task, queued or delayed, does not run it and records
        REVOKED. A task already running sees it through `current_task().revoked`, and ends as
        REVOKED if it then raises `streamtasks.TaskRevoked`."""
        self.app.revoke(self.id, queue=self.queue)

    @property
    def progress(self) -> Any:
        """The latest value the task passed to `current_task().set_progress`, or None."""
        data = self.app.redis_call(lambda: self.app.broker.progress(self._keys.progress(self.id)))
        return None if data is None else self.app.codec.unpack(data)

    async def astatus(self) -> str:
        """`status` for an event loop."""
        fields = await self.app.aredis_call(lambda: self.app.abroker.result_last(self._key))
        return PENDING if fields is None else fields[b"status"].decode()

    def get(self, timeout: float | None = None) -> R:
        """Wait for the task to finish; return its value or raise TaskError (FAILURE or DEAD).

        Raises streamtasks.TimeoutError when `timeout` seconds pass first.
        """
        deadline = self._deadline(timeout)
        after = "0-0"
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            block = _block_ms(left)
            entries = retrying.call(
                partial(self.app.broker.result_entries, self._key, after, block),
                self.app.outage,
                give_up_after=None if left is None else max(left, 0.0),
            )
            after, done = self._outcome(entries, after)
            if done:
                return self._value(entries[-1][1])
            if left is not None and left <= 0:
                raise TimeoutError(f"task {self.id} not ready after {timeout}s")

    async def aget(self, timeout: float | None = None) -> R:
        """`get` for an event loop: waits on redis.asyncio, so the loop runs other work."""
        deadline = self._deadline(timeout)
        after = "0-0"
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            block = _block_ms(left)
            entries = await retrying.acall(
                partial(self.app.abroker.result_entries, self._key, after, block),
                self.app.outage,
                give_up_after=None if left is None else max(left, 0.0),
            )
            after, done = self._outcome(entries, after)
            if done:
                return self._value(entries[-1][1])
            if left is not None and left <= 0:
                raise TimeoutError(f"task {self.id} not ready after {timeout}s")

    def _deadline(self, timeout: float | None) -> float | None:
        if self.ignore_result:
            raise StreamTasksError(f"task {self.id} was sent with ignore_result: no result to get")
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def _outcome(entries: list[Entry], after: str) -> tuple[str, bool]:
        """Where the next read starts, and whether `entries` ends with a final status (the
        entries after it, if any, are left unread)."""
        for i, (entry_id, fields) in enumerate(entries):
            if fields[b"status"].decode() in READY_STATES:
                del entries[i + 1 :]
                return entry_id, True
            after = entry_id
        return after, False

    def _value(self, fields: dict[bytes, bytes]) -> R:
        """The value of a final result entry, or the TaskError it stands for."""
        status = fields[b"status"].decode()
        if status == SUCCESS:
            return self.app.codec.unpack(fields[b"data"])  # type: ignore[no-any-return]
        error: dict[str, Any] = self.app.codec.unpack(fields[b"data"])
        if status == REVOKED:
            raise TaskRevoked(error["message"])
        raise TaskError(error["type"], error["message"], error["traceback"], status)
