"""A failing task says why in the worker's own log, at the default level, as an operator sees it."""

from __future__ import annotations

import json

import pytest

from streamtasks import TaskError
from tests.e2e.conftest import Scene

pytestmark = pytest.mark.timeout(45)


def test_a_failure_logs_one_error_with_the_exception_and_its_traceback(scene: Scene) -> None:
    worker = scene.worker()
    result = scene.task("divide").delay(10, 0)
    with pytest.raises(TaskError):
        result.get(timeout=10)

    [line] = worker.wait_for(rf"ERROR .*e2e\.divide\[{result.id}\]")
    assert "failed on attempt 1" in line
    assert "ZeroDivisionError: division by zero" in line
    log = worker.log
    traceback = log[log.index(line) :]
    assert "Traceback (most recent call last):" in traceback
    assert "return total / parts" in traceback, "the task's own line, from its source file"


def test_each_retry_warns_when_the_next_attempt_runs_and_the_last_one_errors(
    scene: Scene,
) -> None:
    worker = scene.worker()
    result = scene.task("gateway_down").delay("o-7")
    with pytest.raises(TaskError) as failed:
        result.get(timeout=10)
    assert failed.value.status == "DEAD"

    [retry] = worker.wait_for(rf"WARNING .*e2e\.gateway_down\[{result.id}\]")
    assert "attempt 1/2 raised ConnectionError: payment gateway unreachable for o-7" in retry
    assert "attempt 2 runs in 0.1s, at 20" in retry
    [dead] = worker.wait_for(rf"ERROR .*e2e\.gateway_down\[{result.id}\]")
    assert "dead-lettered on attempt 2" in dead
    assert "gave up after 2 attempts: payment gateway unreachable for o-7" in dead


def test_json_logs_carry_each_tasks_fields_one_object_a_line(scene: Scene) -> None:
    worker = scene.worker("--log-format", "json", "-n", "cashier-1")
    assert scene.task("square").delay(3).get(timeout=10) == 9
    failed = scene.task("divide").delay(10, 0)
    with pytest.raises(TaskError):
        failed.get(timeout=10)

    worker.wait_for(r'"outcome": "FAILURE"')
    lines = [json.loads(line) for line in worker.log.splitlines()]
    [ok] = [line for line in lines if line.get("task") == "e2e.square"]
    assert (ok["level"], ok["queue"], ok["attempt"], ok["outcome"]) == (
        "INFO",
        "default",
        1,
        "SUCCESS",
    )
    assert ok["worker"] == "cashier-1" and ok["duration_s"] >= 0 and ok["time"].endswith("Z")
    [bad] = [line for line in lines if line.get("task_id") == failed.id]
    assert (bad["level"], bad["outcome"]) == ("ERROR", "FAILURE")
    assert "ZeroDivisionError: division by zero" in bad["traceback"]
