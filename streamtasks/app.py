"""App: the registry of tasks and the settings they share; the entry point to everything else."""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from streamtasks import retrying
from streamtasks.asyncbroker import AsyncBroker
from streamtasks.broker import Broker
from streamtasks.codec import Codec
from streamtasks.connection import connect, connect_async, resolve_url
from streamtasks.deadletters import DeadLetters
from streamtasks.errors import ConfigurationError
from streamtasks.keys import QueueKeys, check_name
from streamtasks.policy import RetryPolicy
from streamtasks.result import AsyncResult
from streamtasks.retrying import Outage
from streamtasks.task import Task, TaskOptions

if TYPE_CHECKING:
    from streamtasks.worker import Worker

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def load_app(target: str) -> App:
    """The App that `module:attribute` names (attribute `app` if left out), importing the module
    with the current directory on the path, as `streamtasks worker -A` does."""
    module_name, _, attribute = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import module {module_name!r}: {exc}") from exc
    app = getattr(module, attribute or "app", None)
    if not isinstance(app, App):
        raise ConfigurationError(
            f"{module_name!r} has no streamtasks App named {attribute or 'app'!r}"
        )
    return app


def check_limits(soft: float | None, hard: float | None) -> tuple[float | None, float | None]:
    """A soft and a hard time limit, each None (no limit) or seconds > 0, the soft one shorter."""
    for name, value in (("soft_time_limit", soft), ("time_limit", hard)):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf
        if value is not None and not ok:
            raise ConfigurationError(f"{name} must be None or seconds > 0, not {value!r}")
    if soft is not None and hard is not None and soft >= hard:
        raise ConfigurationError(
            f"soft_time_limit ({soft:g}s) must be shorter than time_limit ({hard:g}s): the soft "
            "one warns the task, the hard one ends it"
        )
    return soft, hard


def _default_name(fn: Callable[..., Any]) -> str:
    """module.qualname of a function; a partial or a callable object has none to give."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str)):
        raise ConfigurationError(
            f"{fn!r} has no name of its own to register under: give one, @app.task(name=...)"
        )
    return f"{module}.{qualname}"


class App:
    """A named set of tasks sharing one Redis and one set of defaults.

    `url` defaults to the STREAMTASKS_URL environment variable, then redis://localhost:6379/0.
    Durations are in seconds. `clock` returns the wall-clock time; tests may inject their own.
    """

    def __init__(
        self,
        name: str,
        url: str | None = None,
        *,
        default_queue: str = "default",
        result_ttl: float = 86_400.0,
        visibility_timeout: float = 30.0,
        max_deliveries: int = 5,
        idempotency_ttl: float = 86_400.0,
        max_message_bytes: int = 512 * 1024,
        enqueue_timeout: float = 10.0,
        soft_time_limit: float | None = None,
        time_limit: float | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.name = check_name("app", name)
        self.url = resolve_url(url)
        self.default_queue = check_name("queue", default_queue)
        if visibility_timeout <= 0 or result_ttl <= 0 or idempotency_ttl <= 0:
            raise ConfigurationError(
                "visibility_timeout, result_ttl and idempotency_ttl must be > 0"
            )
        if max_deliveries < 1:
            raise ConfigurationError("max_deliveries must be at least 1")
        self.result_ttl = result_ttl
        self.visibility_timeout = visibility_timeout
        self.max_deliveries = max_deliveries
        self.idempotency_ttl = idempotency_ttl
        self.max_message_bytes = max_message_bytes
        self.enqueue_timeout = enqueue_timeout
        #: Every task's time limits, unless it sets its own: see `App.task`.
        self.soft_time_limit, self.time_limit = check_limits(soft_time_limit, time_limit)
        self.clock = clock
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: How arguments and results are encoded; `register_type` adds to it.
        self.codec = Codec()
        self.outage = Outage(f"app {name}")
        self._broker: Broker | None = None
        # redis.asyncio clients belong to the event loop they were made in: one per loop.
        self._abrokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncBroker] = (
            weakref.WeakKeyDictionary()
        )
        self._keys: dict[str, QueueKeys] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<App {self.name} url={self.url}>"

    @property
    def broker(self) -> Broker:
        """The connection to Redis, opened on first use."""
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = Broker(connect(self.url))
        return self._broker

    @property
    def abroker(self) -> AsyncBroker:
        """The redis.asyncio connection of the running event loop, opened on first use in it."""
        loop = asyncio.get_running_loop()
        found = self._abrokers.get(loop)
        if found is None:
            # Clients of loops that have closed (asyncio.run returned) are dropped here: their
            # connections hold their loop, so it would never leave the weak mapping by itself.
            for closed in [old for old in self._abrokers if old.is_closed()]:
                del self._abrokers[closed]
            found = AsyncBroker(connect_async(self.url), connect_async(self.url))
            self._abrokers[loop] = found
        return found

    def keys(self, queue: str) -> QueueKeys:
        found = self._keys.get(queue)
        if found is None:
            found = self._keys[queue] = QueueKeys(self.name, queue)
        return found

    def check_queue(self, queue: str) -> str:
        return check_name("queue", queue)

    @property
    def queues(self) -> list[str]:
        """The queues of the registered tasks, in registration order."""
        return list(dict.fromkeys(task.queue for task in self.tasks.values()))

    @property
    def known_queues(self) -> list[str]:
        """Every queue this process has met: the registered tasks' queues, the default queue,
        and any a call was sent to with `apply_async(queue=...)`."""
        return list(dict.fromkeys([*self.queues, self.default_queue, *self._keys]))

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        ignore_result: bool = False,
        acks_late: bool = True,
        track_started: bool = False,
        max_retries: int = 3,
        retry_backoff: float = 1.0,
        retry_backoff_max: float = 300.0,
        retry_jitter: bool = True,
        autoretry_for: Iterable[type[BaseException]] = (),
        visibility_timeout: float | None = None,
        idempotency_key: Callable[..., str] | None = None,
        release_key_on_failure: bool = True,
        soft_time_limit: float | None = None,
        time_limit: float | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(  # type: ignore[misc]
        self, fn: Callable[P, R] | None = None, /, **options: Any
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue=..., ...)``.

        `soft_time_limit` and `time_limit` (seconds, default the app's) bound one run: at the
        soft limit SoftTimeLimitExceeded is raised inside the task, which may clean up; at the
        hard limit the worker stops waiting for it and the run ends as TimeLimitExceeded (an
        async task is cancelled, a plain task's thread is replaced). Either is retried when it
        is in `autoretry_for`, else the run is a FAILURE.
        """
        if fn is not None:
            return self._register(fn, {})
        return lambda f: self._register(f, options)

    def _register(self, fn: Callable[P, R], options: dict[str, Any]) -> Task[P, R]:
        known = {
            "name",
            "queue",
            "ignore_result",
            "acks_late",
            "track_started",
            "max_retries",
            "retry_backoff",
            "retry_backoff_max",
            "retry_jitter",
            "autoretry_for",
            "visibility_timeout",
            "idempotency_key",
            "release_key_on_failure",
            "soft_time_limit",
            "time_limit",
        }
        unknown = set(options) - known
        if unknown:
            raise ConfigurationError(f"unknown task option(s): {', '.join(sorted(unknown))}")
        name = options.get("name") or _default_name(fn)
        if getattr(fn, "__module__", None) == "__main__" and not options.get("name"):
            warnings.warn(
                f"task {name!r} is defined in the script being run, so it is named after "
                "__main__; a worker importing your app finds it under its module's name, or not "
                "at all. Define tasks in a module the worker imports (-A module:app), or give "
                "the task a name: @app.task(name=...)",
                stacklevel=3,
            )
        if name in self.tasks:
            raise ConfigurationError(f"a task named {name!r} is already registered")
        visibility = options.get("visibility_timeout")
        if visibility is not None and visibility <= 0:
            raise ConfigurationError("visibility_timeout must be > 0")
        retry = RetryPolicy(
            max_retries=options.get("max_retries", 3),
            backoff=options.get("retry_backoff", 1.0),
            backoff_max=options.get("retry_backoff_max", 300.0),
            jitter=options.get("retry_jitter", True),
            autoretry_for=tuple(options.get("autoretry_for", ())),
        )
        soft, hard = check_limits(
            options.get("soft_time_limit", self.soft_time_limit),
            options.get("time_limit", self.time_limit),
        )
        task = Task(
            self,
            fn,
            TaskOptions(
                name=name,
                queue=check_name("queue", options.get("queue") or self.default_queue),
                ignore_result=options.get("ignore_result", False),
                acks_late=options.get("acks_late", True),
                track_started=options.get("track_started", False),
                retry=retry,
                visibility_timeout=visibility,
                idempotency_key=options.get("idempotency_key"),
                release_key_on_failure=options.get("release_key_on_failure", True),
                soft_time_limit=soft,
                time_limit=hard,
            ),
        )
        self.tasks[name] = task
        return task

    def register_type(
        self,
        cls: type[T],
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
        *,
        name: str | None = None,
    ) -> None:
        """Let arguments and results be instances of `cls`: sent as `encode(instance)` (anything
        streamtasks can send), rebuilt with `decode`. `name` (default module.qualname) is what a
        worker looks the type up by, so producers and workers must both register it::

            app.register_type(Money, lambda m: [m.cents, m.currency], lambda v: Money(*v))
        """
        self.codec.register(cls, encode, decode, name=name)

    def release_key(self, key: str, *, queue: str | None = None) -> bool:
        """Free an idempotency key of `queue` (default: the default queue) now, so the next
        enqueue with it runs a new task; True if the key was held."""
        keys = self.keys(self.check_queue(queue or self.default_queue))
        return self.redis_call(lambda: self.broker.release(keys, key))

    def revoke(self, task_id: str, *, queue: str | None = None) -> None:
        """Make sure the task `task_id` of `queue` (default: the default queue) never starts;
        see AsyncResult.revoke."""
        keys = self.keys(self.check_queue(queue or self.default_queue))
        now_ms, keep_ms = int(self.clock() * 1000), int(self.result_ttl * 1000)
        self.redis_call(lambda: self.broker.revoke(keys, task_id, now_ms=now_ms, keep_ms=keep_ms))

    def redis_call(self, call: Callable[[], T]) -> T:
        """One Redis call made for a producer (or a task, or a test): an outage is ridden out
        with backoff for up to enqueue_timeout, then BrokerUnavailable is raised."""
        return retrying.call(call, self.outage, give_up_after=self.enqueue_timeout)

    async def aredis_call(self, call: Callable[[], Awaitable[T]]) -> T:
        """`redis_call` for an event loop."""
        return await retrying.acall(call, self.outage, give_up_after=self.enqueue_timeout)

    def AsyncResult(self, task_id: str, queue: str | None = None) -> AsyncResult[Any]:
        """A handle on a task enqueued earlier, by id (and queue, when not the default)."""
        return AsyncResult(self, task_id, self.check_queue(queue or self.default_queue))

    def Worker(
        self, queues: Iterable[str] | None = None, concurrency: int = 1, **options: Any
    ) -> Worker:
        """A worker for this app: `run()` blocks, `stop()` ends it, `drain()` runs until idle."""
        from streamtasks.worker import Worker

        return Worker(self, queues, concurrency, **options)

    def dead_letters(self, queue: str | None = None) -> DeadLetters:
        """The dead-letter stream of `queue`: list, get, replay, purge."""
        return DeadLetters(self, queue or self.default_queue)

    async def aclose(self) -> None:
        """Close the running event loop's redis.asyncio connections (a later call opens new)."""
        found = self._abrokers.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found.close()

    def close(self) -> None:
        """Close the connection pool (a later call opens a new one). Event loops' redis.asyncio
        clients are forgotten too (close them with `await app.aclose()` in their loop)."""
        self._abrokers.clear()
        with self._lock:
            if self._broker is not None:
                self._broker.client.close()
                self._broker = None
