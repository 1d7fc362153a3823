"""Task: the decorated function that turns a call into a message (`delay`, `apply_async`, `map`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar

from streamtasks.broker import Claim
from streamtasks.calls import Signature
from streamtasks.errors import ConfigurationError, IdempotencyConflict
from streamtasks.keys import QueueKeys
from streamtasks.message import Fields, Message, encode
from streamtasks.policy import RetryPolicy
from streamtasks.protocol import CONFLICT
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
    release_key_on_failure: bool = True
    soft_time_limit: float | None = None
    time_limit: float | None = None


class Task(Generic[P, R]):
    """A registered task. Calling it runs the function here; `delay` sends it to a worker."""

    def __init__(self, app: App, fn: Callable[P, R], options: TaskOptions):
        self.app = app
        self.fn = fn
        self.options = options
        self.signature = Signature(fn, options.name)
        #: An `async def` task runs on the worker's event loop, not on one of its threads.
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            type(fn).__call__  # an object whose __call__ is async def
        )
        self._keys = app.keys(options.queue)  # every .delay() needs them: built once
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
        """Enqueue a call with these arguments; one round trip to Redis. Arguments the function
        cannot take raise TypeError here, and nothing is enqueued."""
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
        expires: float | dt.datetime | None = None,
    ) -> AsyncResult[R]:
        """Enqueue with options: another queue, a delay (`countdown` seconds or an aware `eta`),
        an idempotency key, headers carried to `current_task().headers`, and `expires` (seconds
        from now, or an aware datetime): a task not started by then is not run (REVOKED).

        A second enqueue with the same idempotency key returns the first task's result when the
        call is the same, and raises IdempotencyConflict when it is not; a key whose task failed
        or was dead-lettered is free again (unless the task says `release_key_on_failure=False`).
        """
        out = self._outgoing(args, kwargs, queue, countdown, eta, idempotency_key, headers, expires)
        broker = self.app.broker
        if out.plain:
            self.app.redis_call(lambda: broker.add(out.keys, out.fields))
            return self._result(out.id, out.keys)
        found = self.app.redis_call(
            lambda: broker.enqueue(out.keys, out.id, out.fields, due_ms=out.due_ms, claim=out.claim)
        )
        return self._found(found, out)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """`delay` for an event loop: the round trip is awaited on redis.asyncio."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        countdown: float | None = None,
        eta: dt.datetime | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, Any] | None = None,
        expires: float | dt.datetime | None = None,
    ) -> AsyncResult[R]:
        """`apply_async` for an event loop: the same checks, options and outcomes, awaited."""
        out = self._outgoing(args, kwargs, queue, countdown, eta, idempotency_key, headers, expires)
        broker = self.app.abroker
        if out.plain:
            await self.app.aredis_call(lambda: broker.add(out.keys, out.fields))
            return self._result(out.id, out.keys)
        found = await self.app.aredis_call(
            lambda: broker.enqueue(out.keys, out.id, out.fields, due_ms=out.due_ms, claim=out.claim)
        )
        return self._found(found, out)

    def _outgoing(
        self,
        args: tuple[Any, ...] | list[Any],
        kwargs: Mapping[str, Any] | None,
        queue: str | None,
        countdown: float | None,
        eta: dt.datetime | None,
        idempotency_key: str | None,
        headers: Mapping[str, Any] | None,
        expires: float | dt.datetime | None,
    ) -> _Outgoing:
        """Check a call and build what enqueues it; raises before anything is sent."""
        # Every .delay() comes through here: the common case (no key, no delay, the task's own
        # queue) takes the short branches.
        args = tuple(args)
        kwargs = dict(kwargs) if kwargs else {}
        self.signature.check(args, kwargs)
        key = None
        if idempotency_key is not None or self.options.idempotency_key is not None:
            key = self._key(args, kwargs, idempotency_key)
        expires_ms = None if expires is None else self._expires_ms(expires)
        message = Message(
            new_id(),
            self.options.name,
            args,
            kwargs,
            dict(headers) if headers else {},
            1,
            key,
            expires_ms,
        )
        fields = encode(message, self.app.codec, self.app.max_message_bytes)
        claim = None if key is None else self._claim(key, args, kwargs)
        keys = self._keys if queue is None else self.app.keys(self.app.check_queue(queue))
        due_ms = 0 if countdown is None and eta is None else self._due_ms(countdown, eta)
        return _Outgoing(message.id, keys, fields, due_ms, claim)

    def _found(self, found: tuple[str, int], out: _Outgoing) -> AsyncResult[R]:
        task_id, code = found
        if code == CONFLICT and out.claim is not None:
            raise IdempotencyConflict(out.claim.key, task_id)
        return self._result(task_id, out.keys)

    def _result(self, task_id: str, keys: QueueKeys) -> AsyncResult[R]:
        return AsyncResult(self.app, task_id, keys, ignore_result=self.options.ignore_result)

    def release_key(self, key: str) -> bool:
        """Free an idempotency key of this task's queue now, so the next enqueue with it runs a
        new task; True if the key was held. A run of the earlier task that is still queued or
        running goes on, and no longer marks the key."""
        return self.app.release_key(key, queue=self.queue)

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any], key: str | None) -> str | None:
        """The idempotency key of this call: the one given, else the task's, if any."""
        if key is None and self.options.idempotency_key is not None:
            key = self.options.idempotency_key(*args, **kwargs)
        return None if key is None else _checked_key(key)

    def _claim(self, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Claim:
        """The key with the fingerprint of the call it stands for (its encoding checked)."""
        call = self.app.codec.canonical([self.name, self.signature.canonical(args, kwargs)])
        return Claim(
            key,
            hashlib.blake2b(call, digest_size=16).hexdigest(),
            int(self.app.idempotency_ttl * 1000),
            keep_on_failure=not self.options.release_key_on_failure,
        )

    def map(self, items: Iterable[Any]) -> list[AsyncResult[R]]:
        """Enqueue one call per item, the item as its only argument, in one round trip."""
        return self.starmap((item,) for item in items)

    def starmap(self, arg_tuples: Iterable[tuple[Any, ...]]) -> list[AsyncResult[R]]:
        """Enqueue one call per tuple of positional arguments, in one round trip; every call is
        checked before any is sent. A key that names another call raises IdempotencyConflict
        once the batch is sent: the other calls were enqueued, and sending the same batch again
        returns their results."""
        keys = self.app.keys(self.queue)
        calls = [tuple(args) for args in arg_tuples]
        for args in calls:
            self.signature.check(args, {})
        batch: list[tuple[str, Fields, Claim | None]] = []
        for args in calls:
            key = self._key(args, {}, None)
            message = Message(new_id(), self.name, args, idempotency_key=key)
            fields = encode(message, self.app.codec, self.app.max_message_bytes)
            batch.append((message.id, fields, None if key is None else self._claim(key, args, {})))
        found: list[tuple[str, int]] = []
        if batch:
            found = self.app.redis_call(lambda: self.app.broker.add_many(keys, batch))
        for (_, _, claim), (task_id, code) in zip(batch, found, strict=True):
            if code == CONFLICT and claim is not None:
                raise IdempotencyConflict(claim.key, task_id)
        return [
            AsyncResult(self.app, task_id, keys, ignore_result=self.options.ignore_result)
            for task_id, _ in found
        ]

    def _expires_ms(self, expires: float | dt.datetime) -> int:
        if isinstance(expires, dt.datetime):
            if expires.tzinfo is None:
                raise ConfigurationError(
                    "expires must be timezone-aware, e.g. datetime.now(timezone.utc)"
                )
            return int(expires.timestamp() * 1000)
        if not expires >= 0:
            raise ConfigurationError(f"expires must be seconds >= 0, not {expires!r}")
        return int((self.app.clock() + expires) * 1000)

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


class _Outgoing(NamedTuple):
    """A checked call, encoded, and where and how it is to be enqueued."""

    id: str
    keys: QueueKeys
    fields: Fields
    due_ms: int
    claim: Claim | None

    @property
    def plain(self) -> bool:
        """Due now and keyless: one XADD, the fast path."""
        return self.claim is None and self.due_ms == 0


def _checked_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"an idempotency key must be a non-empty str, not {key!r}")
    return key
