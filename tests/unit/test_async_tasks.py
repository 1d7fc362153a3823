"""`async def` tasks on a worker's event loop: many at once beside the threads, the same
outcomes as plain tasks, current_task() for each, and a blocking call named in the log."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time

import pytest

from streamtasks import App, Retry, TaskError, current_task


def test_async_tasks_run_at_once_beside_plain_ones(memory_app: App) -> None:
    gate = threading.Event()
    started = threading.Semaphore(0)

    @memory_app.task(name="fetch")
    async def fetch(n: int) -> int:
        started.release()
        await asyncio.to_thread(gate.wait, 10)  # each waits for all of them to have started
        return n * 2

    @memory_app.task(name="plain")
    def plain(n: int) -> int:
        return n + 1

    results = [fetch.delay(n) for n in range(50)]
    also = plain.delay(1)

    def open_gate_once_all_started() -> None:
        for _ in range(50):
            assert started.acquire(timeout=10)
        gate.set()

    opener = threading.Thread(target=open_gate_once_all_started)
    opener.start()
    memory_app.Worker(concurrency=1, async_concurrency=50).drain(timeout=30)
    opener.join()
    assert [r.get(timeout=0) for r in results] == [n * 2 for n in range(50)]
    assert also.get(timeout=0) == 2


def test_each_async_run_sees_its_own_current_task(memory_app: App) -> None:
    @memory_app.task(name="whoami", max_retries=2)
    async def whoami(tag: str) -> tuple[str, int]:
        await asyncio.sleep(0)
        context = current_task()
        if context.attempt == 1 and tag == "retry":
            raise Retry(countdown=0)
        return (context.id, context.attempt)

    one, two = whoami.delay("once"), whoami.delay("retry")
    memory_app.Worker().drain(timeout=10)
    assert one.get(timeout=0) == (one.id, 1)
    assert two.get(timeout=0) == (two.id, 2), "retried, and told it is attempt 2"


def test_an_async_failure_is_recorded_and_logged_like_a_plain_one(
    memory_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @memory_app.task(name="boom")
    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("card network down")

    result = boom.delay()
    with caplog.at_level(logging.WARNING, logger="streamtasks"):
        memory_app.Worker().drain(timeout=10)
    with pytest.raises(TaskError, match="card network down"):
        result.get(timeout=0)
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"boom[{result.id}] failed on attempt 1" in error.getMessage()


def test_a_blocking_call_in_an_async_task_is_named_in_the_log(
    memory_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @memory_app.task(name="sleepy")
    async def sleepy() -> str:
        time.sleep(0.6)  # the mistake the watchdog is there to catch
        return "done"

    result = sleepy.delay()
    with caplog.at_level(logging.WARNING, logger="streamtasks.loop"):
        memory_app.Worker(loop_stall=0.2).drain(timeout=10)
    assert result.get(timeout=0) == "done"
    [warning] = [r.getMessage() for r in caplog.records if r.name == "streamtasks.loop"]
    assert re.search(rf"blocked for \d\.\ds by sleepy\[{result.id}\]", warning), warning
    assert "test_async_tasks.py" in warning and "asyncio.to_thread" in warning


def test_the_test_harness_runs_async_tasks_too(memory_app: App) -> None:
    from streamtasks.testing import Harness

    @memory_app.task(name="double")
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return 2 * n

    harness = Harness(memory_app)
    try:
        result = double.delay(21)
        assert [r.status for r in harness.drain()] == ["SUCCESS"]
        assert result.get(timeout=0) == 42
    finally:
        harness.close()


def test_a_worker_restarted_under_its_name_runs_the_async_entries_it_held(memory_app: App) -> None:
    @memory_app.task(name="fetch")
    async def fetch(n: int) -> int:
        await asyncio.sleep(0)
        return n + 1

    result = fetch.delay(41)
    keys = memory_app.keys("default")
    memory_app.broker.ensure_group(keys)
    assert memory_app.broker.read([keys], "w1", 10, None), "w1 took it, then died"

    memory_app.Worker(name="w1").drain(timeout=10)
    assert result.get(timeout=0) == 42


def test_a_cancelled_error_the_task_raises_itself_is_its_failure(memory_app: App) -> None:
    @memory_app.task(name="gives_up")
    async def gives_up() -> None:
        raise asyncio.CancelledError("the upstream call was cancelled")

    result = gives_up.delay()
    memory_app.Worker().drain(timeout=10)
    with pytest.raises(TaskError, match="CancelledError"):
        result.get(timeout=0)
