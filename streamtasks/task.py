"""Task: the decorated function that turns a call into a message (`delay`, `apply_async`, `map`)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from streamtasks import retrying
from streamtasks.errors import ConfigurationError
from streamtasks.message import Message, encode
from streamtasks.policy import RetryPolicy
from streamtasks.result import AsyncResult

if TYPE_CHECKING:
    from streamtasks.app import App

P = ParamSpec("P")
R = TypeVar("R")


def new_id() -> str:
    """A random 128-bit task id as 32 hex digits (a uuid4 without the version bits, for speed)."""
    return os.urandom(16).hex()


@dataclass(frozen=True)
class TaskOptions:
    name: str
    queue: str
    ignore_result: bool = False
    acks_late: bool = True
    track_started: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    visibility_timeout: float | None = None
    idempotency_key: Callable[..., str] | None = None


class Task(Generic[P, R]):
    """A registered task. Calling it runs the function here; `delay` sends it to a worker."""

    def __init__(self, app: App, fn: Callable[P, R], options: TaskOptions):
        self.app = app
        self.fn = fn
        self.options = options
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def queue(self) -> str:
        return self.options.queue

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Enqueue a call with these arguments; one round trip to Redis."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        countdown: float | None = None,
        eta: dt.datetime | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> AsyncResult[R]:
        """Enqueue with options: another queue, a delay (`countdown` seconds or an aware `eta`),
        an idempotency key (a second enqueue with the same key returns the first task's result),
        headers carried to `current_task().headers`."""
        kwargs = dict(kwargs or {})
        if idempotency_key is None and self.options.idempotency_key is not None:
            idempotency_key = self.options.idempotency_key(*args, **kwargs)
        if idempotency_key is not None:
            idempotency_key = _checked_key(idempotency_key)
        message = Message(
            new_id(),
            self.name,
            tuple(args),
            kwargs,
            dict(headers or {}),
            idempotency_key=idempotency_key,
        )
        fields = encode(message, self.app.max_message_bytes)
        queue = self.queue if queue is None else self.app.check_queue(queue)
        keys = self.app.keys(queue)
        due_ms = self._due_ms(countdown, eta)
        broker = self.app.broker
        if idempotency_key is None and due_ms == 0:
            retrying.call(
                lambda: broker.add(keys, fields),
                self.app.outage,
                give_up_after=self.app.enqueue_timeout,
            )
            task_id = message.id
        else:
            task_id, _ = retrying.call(
                lambda: broker.enqueue(
                    keys,
                    message.id,
                    fields,
                    due_ms=due_ms,
                    idempotency_key=idempotency_key,
                    idempotency_ttl_ms=int(self.app.idempotency_ttl * 1000),
                ),
                self.app.outage,
                give_up_after=self.app.enqueue_timeout,
            )
        return AsyncResult(self.app, task_id, queue, ignore_result=self.options.ignore_result)

    def map(self, items: Iterable[Any]) -> list[AsyncResult[R]]:
        """Enqueue one call per item, the item as its only argument, in one round trip."""
        return self.starmap((item,) for item in items)

    def starmap(self, arg_tuples: Iterable[tuple[Any, ...]]) -> list[AsyncResult[R]]:
        """Enqueue one call per tuple of positional arguments, in one round trip."""
        keys = self.app.keys(self.queue)
        max_bytes = self.app.max_message_bytes
        key_of = self.options.idempotency_key
        messages = [
            Message(
                new_id(),
                self.name,
                tuple(args),
                idempotency_key=None if key_of is None else _checked_key(key_of(*args)),
            )
            for args in arg_tuples
        ]
        batch = [(m.id, encode(m, max_bytes), m.idempotency_key) for m in messages]
        ids: list[str] = []
        if batch:
            ttl_ms = int(self.app.idempotency_ttl * 1000)
            ids = retrying.call(
                lambda: self.app.broker.add_many(keys, batch, ttl_ms),
                self.app.outage,
                give_up_after=self.app.enqueue_timeout,
            )
        return [
            AsyncResult(self.app, task_id, self.queue, ignore_result=self.options.ignore_result)
            for task_id in ids
        ]

    def _due_ms(self, countdown: float | None, eta: dt.datetime | None) -> int:
        if countdown is not None and eta is not None:
            raise ConfigurationError("give countdown or eta, not both")
        if eta is not None:
            if eta.tzinfo is None:
                raise ConfigurationError(
                    "eta must be timezone-aware, e.g. datetime.now(timezone.utc)"
                )
            return int(eta.timestamp() * 1000)
        if countdown is not None:
            if countdown < 0:
                raise ConfigurationError("countdown must not be negative")
            return int((self.app.clock() + countdown) * 1000)
        return 0


def _checked_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"an idempotency key must be a non-empty str, not {key!r}")
    return key
