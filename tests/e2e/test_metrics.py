"""Metrics and health probes of a real worker process, scraped over HTTP and read with
prometheus-client's own parser."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamtasks import TaskError, TaskRevoked
from tests.e2e.conftest import Scene
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as failed:
        return failed.code, failed.read().decode()


def scrape(port: int) -> Samples:
    status, text = get(port, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll what only a scrape can tell (no event says a figure changed)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not seen within {timeout}s"
        time.sleep(0.1)


def runs(samples: Samples, task: str, outcome: str) -> float:
    labels = frozenset({"task": f"e2e.{task}", "queue": "default", "outcome": outcome}.items())
    return samples.get(("streamtasks_tasks_total", labels), 0.0)


def test_the_metrics_count_every_outcome_of_a_known_mix(scene: Scene) -> None:
    revoked = scene.task("record").delay("never")
    revoked.revoke()
    port = free_port()
    scene.worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1")

    assert [r.get(timeout=10) for r in scene.task("square").map(range(5))] == [0, 1, 4, 9, 16]
    for call in (scene.task("divide").delay(1, 0), scene.task("gateway_down").delay("o-1")):
        with pytest.raises(TaskError):
            call.get(timeout=10)
    with pytest.raises(TaskRevoked):
        revoked.get(timeout=10)

    samples = scrape(port)
    assert runs(samples, "square", "succeeded") == 5
    assert runs(samples, "divide", "failed") == 1
    assert (runs(samples, "gateway_down", "retried"), runs(samples, "gateway_down", "dead")) == (
        1,
        1,
    )
    assert runs(samples, "record", "revoked") == 1
    square = frozenset({"task": "e2e.square", "queue": "default"}.items())
    assert samples[("streamtasks_task_duration_seconds_count", square)] == 5
    assert samples[("streamtasks_task_wait_seconds_count", square)] == 5
    assert samples[("streamtasks_worker_in_flight", frozenset())] == 0
    assert samples[("streamtasks_worker_redis_silence_seconds", frozenset())] < 5
    dead = ("streamtasks_queue_dead", frozenset({"queue": "default"}.items()))
    until(lambda: scrape(port).get(dead) == 1, 10, "the dead letter in the queue gauge")


def test_healthz_fails_while_redis_is_frozen_and_recovers_when_it_thaws(
    own_redis: RedisServer, make_scene: Callable[..., Scene]
) -> None:
    scene = make_scene(own_redis)
    port = free_port()
    scene.worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz")[0] == 200

    assert own_redis.process is not None
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        until(lambda: get(port, "/healthz")[0] == 503, 10, "an unhealthy worker")
        assert "no answer from Redis" in get(port, "/healthz")[1]
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    until(lambda: get(port, "/healthz")[0] == 200, 10, "a healthy worker again")


def test_one_endpoint_adds_up_the_worker_processes_and_fails_while_one_is_down(
    scene: Scene,
) -> None:
    port = free_port()
    supervisor = scene.worker(
        "-p", "2", "--metrics-port", str(port), "--metrics-host", "127.0.0.1", ready=2
    )
    until(lambda: get(port, "/readyz")[0] == 200, 10, "both workers ready")

    results = scene.task("square").map(range(40))
    assert [r.get(timeout=10) for r in results] == [x * x for x in range(40)]
    until(lambda: runs(scrape(port), "square", "succeeded") == 40, 10, "40 runs added up")
    assert get(port, "/healthz") == (200, "ok\n")

    child = psutil.Process(supervisor.pid).children()[0]
    child.kill()
    until(lambda: get(port, "/healthz")[0] == 503, 10, "the endpoint failing with one worker down")
    supervisor.wait_for("restarting", timeout=10)
    until(lambda: get(port, "/healthz")[0] == 200, 20, "the endpoint healthy once it restarted")
