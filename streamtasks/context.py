"""What a running task can learn about itself: `current_task()`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from streamtasks.errors import StreamTasksError


def _nowhere(value: Any) -> None:
    raise StreamTasksError("this task context was built outside a worker: no progress to record")


async def _anowhere(value: Any) -> None:
    _nowhere(value)


@dataclass(frozen=True)
class TaskContext:
    """The running task: its id and name, its queue, which attempt this is (the first run is
    attempt 1), how many retries are left after it, its idempotency key and headers, and the
    name of the worker running it."""

    id: str
    name: str
    queue: str
    attempt: int
    retries_left: int
    idempotency_key: str | None
    headers: Mapping[str, Any]
    worker: str
    _progress: Callable[[Any], None] = field(default=_nowhere, repr=False, compare=False)
    _revoked: Callable[[], bool] = field(default=lambda: False, repr=False, compare=False)
    _aprogress: Callable[[Any], Awaitable[None]] = field(
        default=_anowhere, repr=False, compare=False
    )

    @property
    def revoked(self) -> bool:
        """Whether the task was revoked while it runs: a long task can look now and then, and
        stop early. In a worker this is what the worker last found (it looks every
        reclaim_interval); elsewhere, one Redis round trip."""
        return self._revoked()

    def set_progress(self, value: Any) -> None:
        """Record how far the task has got: any value streamtasks can send, such as a number or
        a dict. `result.progress` returns the latest, for as long as the result is kept; the
        result itself is unaffected. (In an `async def` task, `await aset_progress(value)`.)"""
        self._progress(value)

    async def aset_progress(self, value: Any) -> None:
        """`set_progress` for an `async def` task: the event loop is not blocked meanwhile."""
        await self._aprogress(value)


# Holds a function that builds the context, so runs that never ask for it never pay for it.
_current: ContextVar[Callable[[], TaskContext] | None] = ContextVar(
    "streamtasks_current_task", default=None
)


def enter(build: Callable[[], TaskContext]) -> Token[Callable[[], TaskContext] | None]:
    """In this thread (or task), `current_task()` returns what `build` makes until `leave`."""
    return _current.set(build)


def leave(token: Token[Callable[[], TaskContext] | None]) -> None:
    _current.reset(token)


def current_task() -> TaskContext:
    """The context of the task running in this thread; raises outside a task."""
    build = _current.get()
    if build is None:
        raise StreamTasksError("current_task() called outside a running task")
    return build()
