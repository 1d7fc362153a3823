"""The public surface: what the package exports, how it refuses bad registrations and options,
and that no redis-py exception escapes it."""

from __future__ import annotations

import datetime as dt
import inspect
import time
import types

import pytest
import redis

import streamtasks
from streamtasks import App, BrokerUnavailable, ConfigurationError, EncodeError, StreamTasksError
from tests.redis_server import free_port
from tests.unit.support import delayed_len, stream_len


def test_all_lists_every_public_name_and_each_one_imports() -> None:
    public = {
        name
        for name, value in vars(streamtasks).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(streamtasks.__all__) == public
    assert len(streamtasks.__all__) == len(set(streamtasks.__all__))
    for name in streamtasks.__all__:
        assert getattr(streamtasks, name) is not None


def test_all_holds_the_names_the_issue_promises_and_nothing_private() -> None:
    promised = {
        "App",
        "AsyncResult",
        "Task",
        "Worker",
        "current_task",
        "TaskContext",
        "Retry",
        "Reject",
        "StreamTasksError",
        "ConfigurationError",
        "EncodeError",
        "DecodeError",
        "BrokerUnavailable",
        "TaskError",
        "TimeoutError",
    }
    assert promised <= set(streamtasks.__all__)
    assert not [name for name in streamtasks.__all__ if name.startswith("_")]


def test_every_exported_exception_descends_from_the_one_root() -> None:
    errors = [
        value
        for name in streamtasks.__all__
        if inspect.isclass(value := getattr(streamtasks, name)) and issubclass(value, Exception)
    ]
    assert len(errors) >= 9
    assert all(issubclass(e, StreamTasksError) for e in errors)
    assert issubclass(streamtasks.TimeoutError, TimeoutError)
    assert issubclass(EncodeError, TypeError)


def test_bare_decorator_names_the_task_after_module_and_qualname(memory_app: App) -> None:
    @memory_app.task
    def ping(x: int) -> int:
        return x

    assert (
        ping.name
        == f"{__name__}.test_bare_decorator_names_the_task_after_module_and_qualname.<locals>.ping"
    )
    assert ping.queue == "default"
    assert memory_app.tasks[ping.name] is ping
    assert ping(7) == 7, "a plain call runs the function in-process"


def test_registering_two_tasks_under_one_name_is_refused(memory_app: App) -> None:
    memory_app.task(name="shop.ping")(lambda: 1)
    with pytest.raises(ConfigurationError, match="already registered"):
        memory_app.task(name="shop.ping")(lambda: 2)
    assert memory_app.tasks["shop.ping"].fn() == 1


def test_an_unknown_task_option_is_refused_by_name(memory_app: App) -> None:
    with pytest.raises(ConfigurationError, match="retries"):
        memory_app.task(retries=3)(lambda: None)  # type: ignore[call-overload]
    assert memory_app.tasks == {}


@pytest.mark.parametrize(
    "options",
    [{"visibility_timeout": 0}, {"result_ttl": -1}, {"idempotency_ttl": 0}, {"max_deliveries": 0}],
)
def test_app_settings_that_cannot_work_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        App("shop", url="memory://x", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 0},
        {"block": 0},
        {"block": float("nan")},
        {"block": 30},
        {"reclaim_interval": 0.001},
        {"promote_interval": -1},
    ],
)
def test_worker_settings_that_cannot_work_are_refused(options: dict[str, float]) -> None:
    """block=0 would be BLOCK 0 to Redis (wait for ever) and a block past the socket timeout a
    dead connection; a tiny interval would spin the keeper."""
    with pytest.raises(ConfigurationError):
        App("shop", url="memory://x").Worker(**options)


def test_an_unsupported_url_scheme_is_refused_when_first_used() -> None:
    app = App("shop", url="http://localhost:6379")
    with pytest.raises(ConfigurationError, match="unsupported URL"):
        app.broker  # noqa: B018


def test_countdown_and_eta_together_are_refused(memory_app: App) -> None:
    task = memory_app.task(name="t")(lambda: None)
    with pytest.raises(ConfigurationError, match="not both"):
        task.apply_async(countdown=1, eta=dt.datetime.now(dt.timezone.utc))


def test_a_naive_eta_is_refused(memory_app: App) -> None:
    task = memory_app.task(name="t")(lambda: None)
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        task.apply_async(eta=dt.datetime.now())


def test_a_negative_countdown_is_refused(memory_app: App) -> None:
    task = memory_app.task(name="t")(lambda: None)
    with pytest.raises(ConfigurationError, match="negative"):
        task.apply_async(countdown=-1)


def test_refused_options_enqueue_nothing(memory_app: App) -> None:
    task = memory_app.task(name="t")(lambda: None)
    for bad in ({"countdown": -1}, {"eta": dt.datetime.now()}):
        with pytest.raises(ConfigurationError):
            task.apply_async(idempotency_key="k", **bad)  # type: ignore[arg-type]
    assert (stream_len(memory_app), delayed_len(memory_app)) == (0, 0)
    # The key was not reserved by the refused calls.
    first = task.apply_async(idempotency_key="k")
    assert task.apply_async(idempotency_key="k").id == first.id
    assert stream_len(memory_app) == 1


def test_an_invalid_queue_override_is_refused(memory_app: App) -> None:
    task = memory_app.task(name="t")(lambda: None)
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        task.apply_async(queue="orders eu")


def test_a_closed_port_raises_broker_unavailable_within_the_enqueue_timeout(app_name: str) -> None:
    """The producer's promise: `.delay()` never blocks much past `enqueue_timeout`. Backoff is
    random, so the bound is checked on a few calls in a row."""
    app = App(app_name, url=f"redis://127.0.0.1:{free_port()}/0", enqueue_timeout=0.3)
    task = app.task(name="t")(lambda: None)
    took = []
    for _ in range(3):
        began = time.monotonic()
        with pytest.raises(BrokerUnavailable) as info:
            task.delay()
        took.append(time.monotonic() - began)
        assert not isinstance(info.value, redis.RedisError)
        assert isinstance(info.value, ConnectionError)
    app.close()
    assert min(took) >= 0.25, f"gave up before enqueue_timeout: {took}"
    assert max(took) <= 0.3 + 0.2, f"blocked past enqueue_timeout=0.3s: {took}"


def test_every_enqueue_path_translates_an_unreachable_redis(app_name: str) -> None:
    app = App(app_name, url=f"redis://127.0.0.1:{free_port()}/0", enqueue_timeout=0.2)
    task = app.task(name="t")(lambda *numbers: None)
    calls = [
        lambda: task.apply_async(countdown=5),
        lambda: task.apply_async(idempotency_key="k"),
        lambda: task.map([1, 2]),
        lambda: app.AsyncResult("some-id").status,
        lambda: app.AsyncResult("some-id").get(timeout=0.2),
    ]
    for call in calls:
        with pytest.raises(BrokerUnavailable):
            call()
    app.close()


def test_a_redis_error_reply_surfaces_as_a_streamtasks_error(memory_app: App) -> None:
    task = memory_app.task(name="t")(lambda: None)
    # Something else wrote a plain string where the queue's stream should be.
    memory_app.broker.client.set(memory_app.keys("default").stream, "not a stream")
    with pytest.raises(StreamTasksError) as info:
        task.delay()
    assert not isinstance(info.value, redis.RedisError)
    assert "WRONGTYPE" in str(info.value)
