"""Redis going away and coming back: workers ride it out by themselves and lose nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from streamtasks import AsyncResult
from tests.e2e.conftest import Scene
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(45)

UNREACHABLE = r"worker \S+: Redis unreachable .*retrying with backoff"
REACHABLE = r"worker \S+: Redis reachable again"
STARTING_UNREACHABLE = r"WARNING .*Redis at \S+ does not answer \(.*\); trying again in"


class Producer(threading.Thread):
    """Enqueues a task every 20 ms until stopped, riding out outages as a user's code would."""

    def __init__(self, scene: Scene):
        super().__init__(daemon=True)
        self.scene = scene
        self.results: list[AsyncResult[int]] = []
        self.errors: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        square = self.scene.task("square")
        n = 0
        while not self.halt.wait(0.02):
            try:
                self.results.append(square.delay(n))
            except BaseException as exc:
                self.errors.append(exc)
                return
            n += 1


def test_a_redis_restart_mid_run_loses_nothing_and_needs_no_worker_restart(
    own_redis: RedisServer, make_scene: Callable[..., Scene]
) -> None:
    scene = make_scene(own_redis)
    worker = scene.worker("-c", "4")
    producer = Producer(scene)
    producer.start()
    scene.task("square").delay(-1).get(timeout=10)

    own_redis.stop()
    time.sleep(3)  # the outage is the scenario
    own_redis.start()

    worker.wait_for(REACHABLE, timeout=15)
    after = [scene.task("square").delay(n) for n in range(1000, 1020)]
    producer.halt.set()
    producer.join(timeout=15)

    assert producer.errors == []
    results = producer.results + after
    assert [r.get(timeout=20) for r in results] == [
        n * n for n in [*range(len(producer.results)), *range(1000, 1020)]
    ]
    assert worker.proc.poll() is None
    assert len(worker.lines(UNREACHABLE)) == 1, worker.log
    assert len(worker.lines(REACHABLE)) == 1, worker.log


def test_a_worker_started_before_redis_retries_then_serves(
    own_redis: RedisServer, make_scene: Callable[..., Scene]
) -> None:
    scene = make_scene(own_redis)
    own_redis.stop()

    worker = scene.worker("--url", own_redis.url, ready=0)

    [first] = worker.wait_for(STARTING_UNREACHABLE)
    assert own_redis.url in first and "Connection refused" in first, "where, and why"
    assert worker.proc.poll() is None
    own_redis.start()
    worker.wait_for(REACHABLE, timeout=15)
    assert scene.task("square").delay(12).get(timeout=10) == 144
    assert worker.proc.poll() is None


def test_startup_timeout_exits_non_zero_when_redis_never_answers(
    own_redis: RedisServer, make_scene: Callable[..., Scene]
) -> None:
    scene = make_scene(own_redis)
    own_redis.stop()

    worker = scene.worker("--url", own_redis.url, "--startup-timeout", "1.5", ready=0)

    assert worker.wait(timeout=15) == 1
    [said] = worker.lines(r"^error: ")
    assert f"Redis at {own_redis.url} did not answer within 1.5s" in said
    assert len(worker.lines(STARTING_UNREACHABLE)) >= 2, "warned, then again with backoff"
