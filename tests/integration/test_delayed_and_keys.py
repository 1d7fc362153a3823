"""Delayed delivery, retry backoff and idempotency keys on a real Redis, with concurrent callers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import msgpack
import pytest

from streamtasks import App, AsyncResult, Retry, TaskError, current_task
from streamtasks.message import Message, encode, flatten, netstring
from streamtasks.testing import ManualClock
from tests.redis_server import RedisServer
from tests.unit.support import running, wait_until


class GatewayTimeout(Exception):
    pass


def test_concurrent_promoters_move_each_due_message_exactly_once(
    make_app: Callable[..., App], app_name: str
) -> None:
    clock = ManualClock()
    producer = make_app(app_name, clock=clock)
    task = producer.task(name="later")(lambda n: None)
    sent = {task.apply_async((n,), countdown=10).id for n in range(300)}
    clock.advance(10)
    now_ms = int(clock() * 1000)
    promoters = [make_app(app_name) for _ in range(6)]
    keys = producer.keys("default")
    start = threading.Barrier(len(promoters))

    def promote(app: App) -> int:
        start.wait()
        moved = 0
        while True:
            n, _ = app.broker.promote(keys, now_ms, limit=20)
            if n == 0:
                return moved
            moved += n

    with ThreadPoolExecutor(len(promoters)) as pool:
        counts = list(pool.map(promote, promoters))
    assert sum(counts) == 300
    entries = producer.broker.client.xrange(keys.stream)
    ids = [fields[b"id"].decode() for _, fields in entries]
    assert len(ids) == 300 and set(ids) == sent, "every message once, none twice"
    assert producer.broker.client.zcard(keys.delayed) == 0


def test_promote_leaves_messages_that_are_not_due(redis_app: App) -> None:
    task = redis_app.task(name="later")(lambda: None)
    task.apply_async(countdown=60)
    keys = redis_app.keys("default")
    due_ms = int(redis_app.broker.client.zrange(keys.delayed, 0, 0, withscores=True)[0][1])
    assert redis_app.broker.promote(keys, due_ms - 1) == (0, due_ms)
    assert redis_app.broker.promote(keys, due_ms) == (1, None)


def test_a_running_worker_starts_a_delayed_task_soon_after_it_is_due(redis_app: App) -> None:
    started: list[float] = []
    task = redis_app.task(name="later")(lambda: started.append(time.time()))
    keys = redis_app.keys("default")
    # Promotion waits on the producer's wake-up, not on a poll: with the fallback poll a minute
    # away, the task still starts on time.
    with running(redis_app.Worker(promote_interval=60.0)):
        result = task.apply_async(countdown=0.4)
        due = redis_app.broker.client.zrange(keys.delayed, 0, 0, withscores=True)[0][1] / 1000
        result.get(timeout=5)
    [began] = started
    assert began >= due - 0.002, f"started {due - began:.3f}s before it was due"
    assert began - due < 0.5, f"started {began - due:.3f}s after it was due"


def test_a_retry_runs_when_it_is_due_not_at_the_next_poll(redis_app: App) -> None:
    starts: list[float] = []

    @redis_app.task(name="flaky", max_retries=1)
    def flaky() -> str:
        starts.append(time.time())
        if len(starts) == 1:
            raise Retry(countdown=0.3)
        return "paid"

    result = flaky.delay()
    with running(redis_app.Worker(promote_interval=60.0)):
        assert result.get(timeout=5) == "paid"
    entries = redis_app.broker.client.xrange(redis_app.keys("default").result(result.id))
    [due_ms] = [
        msgpack.unpackb(fields[b"data"])["due_ms"]
        for _, fields in entries
        if fields[b"status"] == b"RETRY"
    ]
    late = starts[1] - due_ms / 1000
    assert -0.002 <= late < 0.5, f"the retry started {late:.3f}s after it was due"


def test_a_delayed_message_added_without_a_wake_up_is_promoted_by_the_fallback(
    redis_app: App,
) -> None:
    """A producer in another language may ZADD a delayed message by hand and announce nothing
    (docs/protocol.md): the worker still runs it, within promote_interval of its due time."""
    started: dict[str, float] = {}
    ran = threading.Event()

    @redis_app.task(name="later")
    def later(label: str) -> None:
        started[label] = time.time()
        ran.set()

    keys = redis_app.keys("default")
    client = redis_app.broker.client
    with running(redis_app.Worker(promote_interval=0.3)):
        later.delay("warm-up").get(timeout=5)  # the worker's start-up promote is behind us
        ran.clear()
        due = time.time() + 0.1
        blob = netstring(flatten(encode(Message("by-hand", "later", ("by hand",)))))
        client.zadd(keys.delayed, {blob: due * 1000})
        assert ran.wait(5), "a delayed message added by hand never ran"
    assert client.exists(keys.wake) == 0, "nothing announced it"
    late = started["by hand"] - due
    assert 0 <= late < 1.0, f"started {late:.3f}s after it was due (promote_interval 0.3 s)"


def test_a_spoiled_wake_key_costs_only_promptness(
    redis_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone else's SET on a queue's wake key: delayed tasks and retries are still enqueued,
    settled and run (promoted every promote_interval instead of when due), and the worker says so
    once."""
    keys = redis_app.keys("default")
    redis_app.broker.client.set(keys.wake, "not a stream")
    attempts: list[int] = []

    @redis_app.task(name="flaky", max_retries=1)
    def flaky() -> str:
        attempts.append(current_task().attempt)
        if len(attempts) == 1:
            raise Retry(countdown=0.05)
        return "paid"

    later = redis_app.task(name="later")(lambda: "shipped")
    worker = redis_app.Worker(promote_interval=0.1)
    with caplog.at_level(logging.WARNING, logger="streamtasks"), running(worker):
        shipped = later.apply_async(countdown=0.05)
        paid = flaky.delay()
        assert shipped.get(timeout=5) == "shipped"
        assert paid.get(timeout=5) == "paid"
    assert attempts == [1, 2]
    warnings = [r for r in caplog.records if keys.wake in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_a_queue_whose_delayed_set_is_spoiled_holds_up_no_other_queue(
    redis_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    alpha, beta = redis_app.keys("alpha"), redis_app.keys("beta")
    redis_app.broker.client.set(alpha.delayed, "not a sorted set")
    redis_app.task(name="a", queue="alpha")(lambda: "a")
    later = redis_app.task(name="b", queue="beta")(lambda: "b")
    worker = redis_app.Worker(promote_interval=0.1)
    with caplog.at_level(logging.ERROR, logger="streamtasks"), running(worker):
        assert later.apply_async(countdown=0.05).get(timeout=5) == "b"
        wait_until(lambda: len(caplog.records) > 0, what="the failure to be logged")
    failures = [r.getMessage() for r in caplog.records if "alpha" in r.getMessage()]
    assert len(failures) == 1, "logged once, not at every promotion"
    assert redis_app.broker.client.get(alpha.delayed) == b"not a sorted set"
    assert redis_app.broker.client.zcard(beta.delayed) == 0


def test_an_idle_worker_barely_calls_redis(own_redis: RedisServer, app_name: str) -> None:
    """Nothing polls on an idle worker's behalf: it blocks in reads, and its keeper runs a script
    three times a second (reclaim twice, the fallback promote once). A fleet of idle workers costs
    Redis little."""
    app = App(app_name, url=own_redis.url)
    app.task(name="ping")(lambda: "pong")
    client = own_redis.client()

    def scripts_run() -> int:
        return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    try:
        with running(app.Worker(concurrency=4)):
            assert app.tasks["ping"].delay().get(timeout=5) == "pong"
            before = scripts_run()
            # Time itself is what is measured here: how many scripts an idle second runs.
            time.sleep(2.0)
            per_second = (scripts_run() - before) / 2.0
    finally:
        app.close()
    # Promotion by polling every 50 ms would alone run 20 a second.
    assert per_second <= 5, f"an idle worker ran {per_second:.1f} scripts a second"


def test_retry_delays_fall_inside_the_backoff_bounds(
    make_app: Callable[..., App], app_name: str
) -> None:
    clock = ManualClock()
    app = make_app(app_name, clock=clock)
    attempts: list[int] = []

    @app.task(
        name="flaky",
        autoretry_for=(GatewayTimeout,),
        max_retries=3,
        retry_backoff=2.0,
        retry_backoff_max=5.0,
        retry_jitter=True,
    )
    def flaky() -> None:
        attempts.append(current_task().attempt)
        raise GatewayTimeout("gateway timed out")

    result = flaky.delay()
    keys = app.keys("default")
    after = "0-0"
    with running(app.Worker()):
        for attempt, full in enumerate([2.0, 4.0, 5.0]):
            [(after, fields)] = app.broker.result_entries(keys.result(result.id), after, 5000)
            assert fields[b"status"] == b"RETRY"
            info = msgpack.unpackb(fields[b"data"])
            [(_, score)] = app.broker.client.zrange(keys.delayed, 0, -1, withscores=True)
            assert score == info["due_ms"], "the delayed zset holds the retry at its due time"
            delay = score / 1000 - clock()
            assert full / 2 - 0.001 <= delay <= full + 0.001, f"retry {attempt + 1}: {delay}s"
            clock.set(score / 1000)
        with pytest.raises(TaskError) as info:
            result.get(timeout=5)
    assert info.value.status == "DEAD"
    assert attempts == [1, 2, 3, 4]


def test_a_hundred_producers_with_one_key_enqueue_one_task(
    make_app: Callable[..., App], app_name: str
) -> None:
    producers = [make_app(app_name) for _ in range(4)]
    runs: list[str] = []
    for app in producers:
        app.task(name="place_order")(lambda order_id: runs.append(order_id))
    start = threading.Barrier(100)

    def produce(n: int) -> AsyncResult[object]:
        task = producers[n % 4].tasks["place_order"]
        start.wait()
        return task.apply_async(("o-1",), idempotency_key="order:o-1")

    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(produce, range(100)))
    assert len({r.id for r in results}) == 1
    app = producers[0]
    assert app.broker.client.xlen(app.keys("default").stream) == 1
    app.Worker().drain(timeout=10)
    assert runs == ["o-1"]
    assert all(r.status == "SUCCESS" for r in results[:3])
