"""Redis outages on a server of the test's own (`own_redis`): workers and producers ride them out
and lose nothing that was enqueued. The server keeps its port and AOF directory across restarts."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from streamtasks import App, AsyncResult, ConfigurationError
from tests.redis_server import RedisServer
from tests.unit.support import running, wait_until


def test_a_worker_started_while_redis_is_down_serves_once_it_is_up(
    own_redis: RedisServer, make_app: Callable[..., App], app_name: str
) -> None:
    app = make_app(app_name, url=own_redis.url)
    task = app.task(name="ping")(lambda x: x)
    result = task.delay("pong")
    own_redis.stop()
    worker = app.Worker()
    with running(worker):
        wait_until(lambda: worker.outage.down, what="the worker to notice the outage")
        own_redis.start()
        assert result.get(timeout=8) == "pong"
    assert not worker.outage.down


def test_a_delayed_task_that_came_due_during_an_outage_is_promoted_soon_after_it(
    own_redis: RedisServer, make_app: Callable[..., App], app_name: str
) -> None:
    app = make_app(app_name, url=own_redis.url)
    ran = threading.Event()
    task = app.task(name="later")(lambda: ran.set())
    keys = app.keys("default")
    worker = app.Worker()
    with running(worker):
        task.apply_async(countdown=0.5)
        [(_, due_ms)] = app.broker.client.zrange(keys.delayed, 0, -1, withscores=True)
        own_redis.stop()  # AOF flushed: the delayed message survives the restart
        wait_until(lambda: worker.outage.down, what="the worker to notice the outage")
        # The outage lasts past the due time: the keeper's promote fails and backs off.
        time.sleep(max(0.0, due_ms / 1000 - time.time()) + 0.5)
        own_redis.start()
        back = time.monotonic()
        wait_until(lambda: app.broker.client.zcard(keys.delayed) == 0, 10, "the promotion")
        late = time.monotonic() - back
        assert ran.wait(10), "the delayed task never ran"
    # Promoted once Redis answers again, not after the keeper's outage backoff (4 s).
    assert late < 2.5, f"promoted {late:.1f}s after Redis came back"


def test_a_redis_restart_mid_run_loses_no_enqueued_task(
    own_redis: RedisServer, make_app: Callable[..., App], app_name: str
) -> None:
    app = make_app(app_name, url=own_redis.url)
    runs = Counter[int]()
    lock = threading.Lock()

    @app.task(name="count")
    def count(n: int) -> int:
        with lock:
            runs[n] += 1
        return n

    worker = app.Worker(concurrency=2)
    with running(worker):
        before = count.map(range(200))
        own_redis.stop()  # a planned restart: AOF flushed, then the same port again
        own_redis.start()
        after = count.map(range(200, 300))
        results = [r.get(timeout=8) for r in before + after]
    assert results == list(range(300))
    assert set(runs) == set(range(300)), "every enqueued task ran"
    keys = app.keys("default")
    assert app.broker.backlog(keys) == (0, 0, 0)


def test_a_producer_rides_out_a_short_outage(
    own_redis: RedisServer, make_app: Callable[..., App], app_name: str
) -> None:
    app = make_app(app_name, url=own_redis.url, enqueue_timeout=8.0)
    task = app.task(name="ping")(lambda: "pong")
    task.delay()  # connected once before the outage
    own_redis.stop()
    sent: list[AsyncResult[str]] = []
    producer = threading.Thread(target=lambda: sent.append(task.delay()))
    producer.start()
    wait_until(lambda: app.outage.down, what="the producer to notice the outage")
    own_redis.start()
    producer.join(10)
    [result] = sent
    app.Worker().drain(timeout=5)
    assert result.get(timeout=1) == "pong"


def test_a_worker_recreates_its_group_when_redis_comes_back_without_data(
    own_redis: RedisServer, make_app: Callable[..., App], app_name: str
) -> None:
    app = make_app(app_name, url=own_redis.url)
    task = app.task(name="ping")(lambda x: x)
    assert isinstance(task.delay("before"), AsyncResult)
    worker = app.Worker()
    with running(worker):
        wait_until(
            lambda: app.broker.backlog(app.keys("default"))[0] == 0, what="the first task to run"
        )
        # What a restart without persistence, or a failover to an empty replica, leaves behind.
        own_redis.client().flushall()
        result = task.delay("after")
        assert result.get(timeout=8) == "after"


def test_wrong_credentials_are_a_configuration_error_not_an_outage_to_wait_out(
    tmp_path: Path, app_name: str
) -> None:
    server = RedisServer(tmp_path / "locked", options=("--requirepass", "right"))
    server.start()
    try:
        app = App(app_name, url=f"redis://:wrong@127.0.0.1:{server.port}/0", enqueue_timeout=30)
        task = app.task(name="t")(lambda: None)
        began = time.monotonic()
        with pytest.raises(ConfigurationError, match="credentials"):
            task.delay()
        assert time.monotonic() - began < 5, "refused at once, not retried for enqueue_timeout"
        app.close()
    finally:
        server.stop()


def test_credentials_refused_while_running_stop_the_worker_with_that_cause(
    tmp_path: Path, app_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Waiting cannot fix a rotated password: the worker stops, says why once, and leaves its
    entries pending for a worker with the new credentials."""
    server = RedisServer(tmp_path / "locked", options=("--requirepass", "old"))
    server.start()
    try:
        app = App(app_name, url=f"redis://:old@127.0.0.1:{server.port}/0")
        ping = app.task(name="ping")(lambda x: x)
        assert ping.delay(1).id
        worker = app.Worker()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                worker.run()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        admin = redis.Redis(host="127.0.0.1", port=server.port, password="old")
        wait_until(lambda: admin.xlen(app.keys("default").stream) == 0, what="the first task")
        admin.config_set("requirepass", "new")
        admin.client_kill_filter(_type="normal", skipme=True)
        thread.join(15)
        assert not thread.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], ConfigurationError)
        assert "credentials" in str(errors[0])
        assert len([r for r in caplog.records if "stopping" in r.getMessage()]) <= 3
        app.close()
    finally:
        server.stop()


def test_a_run_that_finishes_after_redis_lost_its_entry_still_reports_its_result(
    own_redis: RedisServer, make_app: Callable[..., App], app_name: str
) -> None:
    app = make_app(app_name, url=own_redis.url)
    started, finish = threading.Event(), threading.Event()

    @app.task(name="slow")
    def slow() -> str:
        started.set()
        finish.wait(10)
        return "done"

    result = slow.delay()
    with running(app.Worker()):
        assert started.wait(10)
        own_redis.client().flushall()  # the data is gone while the task runs
        finish.set()
        assert result.get(timeout=8) == "done", "the producer is not left waiting for ever"
