"""A worker subprocess runs what the test process enqueues, and every caller gets its own value."""

from __future__ import annotations

import logging

import pytest

from streamtasks import TimeoutError
from tests.e2e.conftest import Scene

pytestmark = pytest.mark.timeout(45)


@pytest.mark.parametrize(
    "options", [["-c", "4"], ["-p", "2", "-c", "2"]], ids=["threads", "processes"]
)
def test_every_caller_gets_the_value_of_its_own_task(scene: Scene, options: list[str]) -> None:
    scene.worker(*options, ready=2 if "-p" in options else 1)

    results = [scene.task("square").delay(x) for x in range(200)]

    assert [r.get(timeout=20) for r in results] == [x * x for x in range(200)]
    assert {r.status for r in results} == {"SUCCESS"}


def test_a_bulk_drain_leaves_an_empty_stream(scene: Scene) -> None:
    worker = scene.worker("-c", "8")

    results = scene.task("square").map(range(2000))

    assert [r.get(timeout=25) for r in results] == [x * x for x in range(2000)]
    # Acked entries are deleted too, so a queue that keeps up does not grow without bound.
    (queue,) = scene.cli_json("status")["queues"]
    counts = (queue["waiting"], queue["in_flight"], queue["delayed"], queue["dead"])
    assert counts == (0, 0, 0, 0), worker.log
    assert scene.redis.xlen(scene.stream) == 0


def test_waiting_longer_than_five_seconds_is_quiet_and_times_out_as_asked(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    scene.worker()
    slow = scene.task("busy").delay("slow", 7.0)

    with caplog.at_level(logging.WARNING, logger="streamtasks"), pytest.raises(TimeoutError):
        slow.get(timeout=5.5)
    with caplog.at_level(logging.WARNING, logger="streamtasks"):
        assert slow.get(timeout=10) != ""

    # Nothing went wrong with Redis, so the caller is not told it did.
    assert [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()] == []
