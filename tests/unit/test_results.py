"""What a producer sees through AsyncResult, and what a running task sees through current_task()."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from streamtasks import (
    App,
    Reject,
    Retry,
    StreamTasksError,
    TaskContext,
    TaskError,
    current_task,
)
from streamtasks import TimeoutError as ResultTimeout
from streamtasks.testing import ManualClock
from tests.unit.support import running


class GatewayTimeout(Exception):
    pass


def test_a_result_is_pending_until_a_worker_runs_the_task(memory_app: App) -> None:
    @memory_app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    result = double.delay(21)
    assert (result.status, result.ready()) == ("PENDING", False)
    memory_app.Worker().drain(timeout=5)
    assert (result.status, result.ready()) == ("SUCCESS", True)
    assert result.get(timeout=1) == 42


def test_results_keep_msgpack_types(memory_app: App) -> None:
    @memory_app.task(name="echo")
    def echo(value: Any) -> Any:
        return value

    payload = {"order": "o-1", "qty": 2, "lines": [1.5, None, True], "raw": b"\x00\xff"}
    result = echo.delay(payload)
    memory_app.Worker().drain(timeout=5)
    assert result.get(timeout=1) == payload


def test_a_failed_task_raises_task_error_with_remote_type_message_and_traceback(
    memory_app: App,
) -> None:
    @memory_app.task(name="charge")
    def charge(amount: int) -> None:
        raise ValueError(f"amount {amount} over limit")

    result = charge.delay(900)
    memory_app.Worker().drain(timeout=5)
    assert result.status == "FAILURE"
    with pytest.raises(TaskError) as info:
        result.get(timeout=1)
    error = info.value
    assert (error.type_name, error.message, error.status) == (
        "ValueError",
        "amount 900 over limit",
        "FAILURE",
    )
    assert "in charge" in error.traceback
    assert "ValueError: amount 900 over limit" in error.traceback
    assert str(error) == "ValueError: amount 900 over limit"


def test_a_rejected_task_is_dead_and_get_says_so(memory_app: App) -> None:
    @memory_app.task(name="pay", max_retries=5)
    def pay() -> None:
        raise Reject("card declined")

    result = pay.delay()
    memory_app.Worker().drain(timeout=5)
    assert result.status == "DEAD"
    with pytest.raises(TaskError) as info:
        result.get(timeout=1)
    assert (info.value.type_name, info.value.message, info.value.status) == (
        "Reject",
        "card declined",
        "DEAD",
    )


def test_a_return_value_msgpack_cannot_encode_is_a_failure_not_a_crash(memory_app: App) -> None:
    @memory_app.task(name="bad_return")
    def bad_return() -> object:
        return object()

    result = bad_return.delay()
    memory_app.Worker().drain(timeout=5)
    with pytest.raises(TaskError) as info:
        result.get(timeout=1)
    assert info.value.type_name == "EncodeError"


def test_status_is_retry_while_a_retry_waits_for_its_due_time(
    clock_app: App, clock: ManualClock
) -> None:
    runs: list[int] = []

    @clock_app.task(
        name="flaky", autoretry_for=(GatewayTimeout,), retry_backoff=10.0, retry_jitter=False
    )
    def flaky() -> str:
        runs.append(current_task().attempt)
        if len(runs) == 1:
            raise GatewayTimeout("upstream slow")
        return "ok"

    result = flaky.delay()
    with running(clock_app.Worker(promote_interval=0.01)):
        # The first status a producer can see is RETRY: wait for it on the result stream.
        first = clock_app.broker.result_entries(
            clock_app.keys("default").result(result.id), "0-0", 5000
        )
        assert [f[b"status"] for _, f in first] == [b"RETRY"]
        assert result.status == "RETRY"
        assert not result.ready()
        score = clock_app.broker.client.zrange(
            clock_app.keys("default").delayed, 0, -1, withscores=True
        )[0][1]
        assert score == (clock.now + 10.0) * 1000, "due after exactly the backoff"
        clock.advance(10.0)
        assert result.get(timeout=5) == "ok"
    assert runs == [1, 2]
    assert result.status == "SUCCESS"


def test_get_times_out_with_streamtasks_timeout_error(memory_app: App) -> None:
    task = memory_app.task(name="never_run")(lambda: None)
    result = task.delay()
    began = time.monotonic()
    with pytest.raises(ResultTimeout) as info:
        result.get(timeout=0.2)
    took = time.monotonic() - began
    assert isinstance(info.value, TimeoutError)
    assert 0.15 <= took < 1.0


def test_get_with_no_time_left_still_returns_a_result_that_is_there(memory_app: App) -> None:
    @memory_app.task(name="five")
    def five() -> int:
        return 5

    result = five.delay()
    with pytest.raises(ResultTimeout):
        result.get(timeout=0)
    memory_app.Worker().drain(timeout=5)
    assert result.get(timeout=0) == 5


def test_get_of_an_ignore_result_task_says_there_is_nothing_to_get(memory_app: App) -> None:
    ran = threading.Event()

    @memory_app.task(name="fire_and_forget", ignore_result=True)
    def fire_and_forget() -> int:
        ran.set()
        return 1

    result = fire_and_forget.delay()
    with pytest.raises(StreamTasksError, match="ignore_result"):
        result.get(timeout=1)
    memory_app.Worker().drain(timeout=5)
    assert ran.is_set()
    assert not memory_app.broker.client.exists(memory_app.keys("default").result(result.id))


def test_an_async_result_can_be_rebuilt_from_its_id(memory_app: App) -> None:
    task = memory_app.task(name="t", queue="orders")(lambda: "done")
    sent = task.delay()
    memory_app.Worker().drain(timeout=5)
    assert memory_app.AsyncResult(sent.id, queue="orders").get(timeout=1) == "done"
    assert memory_app.AsyncResult(sent.id).status == "PENDING", "other queue, other result"


def test_current_task_describes_the_running_task(memory_app: App) -> None:
    seen: list[TaskContext] = []

    @memory_app.task(name="shop.place_order", queue="orders", max_retries=4)
    def place_order(order_id: str) -> None:
        seen.append(current_task())

    result = place_order.apply_async(
        ("o-1",), idempotency_key="order:o-1", headers={"trace_id": "abc"}
    )
    worker = memory_app.Worker(name="worker-7")
    worker.drain(timeout=5)
    result.get(timeout=1)
    assert seen == [
        TaskContext(
            id=result.id,
            name="shop.place_order",
            queue="orders",
            attempt=1,
            retries_left=4,
            idempotency_key="order:o-1",
            headers={"trace_id": "abc"},
            worker="worker-7",
        )
    ]


def test_current_task_counts_attempts_and_retries_left(leaping_app: App) -> None:
    seen: list[tuple[int, int]] = []

    @leaping_app.task(name="flaky", max_retries=2)
    def flaky() -> None:
        context = current_task()
        seen.append((context.attempt, context.retries_left))
        raise Retry()

    result = flaky.delay()
    leaping_app.Worker().drain(timeout=5)
    assert seen == [(1, 2), (2, 1), (3, 0)]
    assert result.status == "DEAD"


def test_current_task_outside_a_task_raises(memory_app: App) -> None:
    with pytest.raises(StreamTasksError, match="outside a running task"):
        current_task()
    task = memory_app.task(name="t")(lambda: current_task().name)
    with pytest.raises(StreamTasksError):
        task()  # a plain in-process call is not a running task


def test_track_started_shows_started_while_the_task_runs(memory_app: App) -> None:
    seen: dict[str, str] = {}

    @memory_app.task(name="tracked", track_started=True)
    def tracked() -> None:
        seen["tracked"] = memory_app.AsyncResult(current_task().id).status

    @memory_app.task(name="untracked")
    def untracked() -> None:
        seen["untracked"] = memory_app.AsyncResult(current_task().id).status

    a, b = tracked.delay(), untracked.delay()
    memory_app.Worker().drain(timeout=5)
    assert seen == {"tracked": "STARTED", "untracked": "PENDING"}
    assert (a.status, b.status) == ("SUCCESS", "SUCCESS")
