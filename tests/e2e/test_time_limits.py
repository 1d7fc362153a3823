"""Time limits, with real worker processes: a soft limit reaches the task, which cleans up; a hard
limit decides the run as TimeLimitExceeded and frees its slot, even from a task stuck in a socket
read (its thread replaced, or under -p its process)."""

from __future__ import annotations

import psutil
import pytest

from streamtasks import TaskError
from tests.e2e.conftest import Scene

pytestmark = pytest.mark.timeout(60)


def test_a_task_at_its_soft_limit_cleans_up_and_fails_with_the_limit(scene: Scene) -> None:
    scene.worker()
    result = scene.task("clean_up_late").delay("job")

    with pytest.raises(TaskError, match="SoftTimeLimitExceeded"):
        result.get(timeout=10)
    assert scene.traces.notes("job") == ["cleaned up: SoftTimeLimitExceeded"]
    assert scene.pending() == []


def test_a_task_stuck_past_its_time_limit_fails_and_its_thread_is_replaced(
    scene: Scene,
) -> None:
    worker = scene.worker("-c", "1")
    stuck = scene.task("stuck").delay("gateway")
    scene.traces.started(timeout=10)

    with pytest.raises(TaskError, match="TimeLimitExceeded: ran past its time limit of 1s"):
        stuck.get(timeout=10)
    assert stuck.status == "FAILURE"
    # The only thread is still blocked in its read, yet the worker runs the next task.
    assert scene.task("square").delay(7).get(timeout=10) == 49
    assert scene.traces.completions("gateway") == 0
    worker.wait_for(r"stuck\[.*given up on and replaced")
    assert scene.pending() == []

    scene.traces.open_gate()  # the stuck call returns at last: its outcome is not applied
    scene.traces.wait_note("gateway", timeout=10)
    assert scene.task("square").delay(8).get(timeout=10) == 64
    result_key = scene.app.keys("default").result(stuck.id)
    assert [f[b"status"] for _, f in scene.redis.xrange(result_key)] == [b"FAILURE"]
    assert len(worker.lines(rf"stuck\[{stuck.id}\] (failed|SUCCESS)")) == 1


def test_a_time_limit_in_autoretry_for_retries_the_task(scene: Scene) -> None:
    scene.worker("-c", "1")
    result = scene.task("stuck_once").delay("flaky")

    assert result.get(timeout=15) == 2
    assert scene.traces.runs("flaky") == 2


def test_under_processes_a_stuck_task_gets_its_process_replaced(scene: Scene) -> None:
    supervisor = scene.worker("-p", "2", "-c", "1", ready=2)
    children = {p.pid for p in psutil.Process(supervisor.pid).children()}
    stuck = scene.task("stuck").delay("gateway")
    scene.traces.started(timeout=10)

    with pytest.raises(TaskError, match="TimeLimitExceeded"):
        stuck.get(timeout=10)
    supervisor.wait_for(r"a new process takes its place", timeout=15)
    supervisor.wait_for(r"serving", count=3, timeout=15)
    now = {p.pid for p in psutil.Process(supervisor.pid).children()}
    assert len(now) == 2 and len(now - children) == 1
    assert [scene.task("square").delay(n).get(timeout=10) for n in range(4)] == [0, 1, 4, 9]
    assert scene.traces.completions("gateway") == 0


def test_an_async_task_past_its_time_limit_is_cancelled(scene: Scene) -> None:
    scene.worker()
    result = scene.task("async_stuck").delay("call")

    with pytest.raises(TaskError, match="TimeLimitExceeded"):
        result.get(timeout=10)
    assert scene.traces.notes("call") == ["cancelled"]
    assert scene.pending() == []


def test_an_async_task_at_its_soft_limit_may_clean_up_and_return(scene: Scene) -> None:
    scene.worker()
    assert scene.task("async_clean_up_late").delay("job").get(timeout=10) == "cleaned up"
