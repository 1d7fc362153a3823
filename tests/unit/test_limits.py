"""The parts that stop a run early: alarms, a soft limit inside a coroutine, an exception raised
in a task's thread only while the task runs; and the time-limit options."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from streamtasks import App, ConfigurationError, SoftTimeLimitExceeded, TimeLimitExceeded
from streamtasks.limits import Alarms, Interruptible, ThreadRun


def test_alarms_ring_in_time_order_and_a_cancelled_one_never_rings() -> None:
    alarms = Alarms("t")
    rang: list[str] = []
    last = threading.Event()
    now = time.monotonic()
    alarms.at(now + 0.03, lambda: rang.append("second"))
    alarms.at(now + 0.01, lambda: rang.append("first"))
    alarms.at(now + 0.02, lambda: rang.append("cancelled")).cancel()
    alarms.at(now + 0.04, last.set)
    try:
        assert last.wait(5)
        assert rang == ["first", "second"]
    finally:
        alarms.close()


def test_alarms_closed_drop_what_is_due_and_start_again_on_use() -> None:
    alarms = Alarms("t")
    dropped = threading.Event()
    alarms.at(time.monotonic() + 60, dropped.set)
    alarms.close()
    rang = threading.Event()
    alarms.at(time.monotonic(), rang.set)
    try:
        assert rang.wait(5) and not dropped.is_set()
    finally:
        alarms.close()


def _run_in_thread(body: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(body()))  # type: ignore[operator]
    thread.start()
    return thread, out


def test_a_thread_run_is_interrupted_while_its_task_runs_and_never_after() -> None:
    started, runs = threading.Event(), []

    def task() -> str:
        run = ThreadRun()
        runs.append(run)
        started.set()
        try:
            while True:
                time.sleep(0.001)  # Python code between short C calls: interruptible
        except SoftTimeLimitExceeded:
            pass
        given_up = run.end()
        run.interrupt(SoftTimeLimitExceeded)  # too late: must not be raised here
        time.sleep(0.05)
        return f"cleaned up, given up: {given_up}"

    thread, out = _run_in_thread(task)
    assert started.wait(5)
    runs[0].interrupt(SoftTimeLimitExceeded)
    thread.join(5)
    assert out == ["cleaned up, given up: False"]
    assert runs[0].give_up() is False  # ended: nothing to give up


def test_giving_up_on_a_thread_run_tells_its_thread_when_the_task_returns() -> None:
    started, release, runs = threading.Event(), threading.Event(), []

    def task() -> bool:
        run = ThreadRun()
        runs.append(run)
        started.set()
        with contextlib.suppress(TimeLimitExceeded):
            release.wait(5)  # blocked in C: the exception waits for it to return
        while True:
            try:
                return run.end()
            except TimeLimitExceeded:
                continue

    thread, out = _run_in_thread(task)
    assert started.wait(5)
    assert runs[0].give_up() is True
    release.set()
    thread.join(5)
    assert out == [True]


async def _sleeper(log: list[str], started: asyncio.Event) -> str:
    try:
        started.set()
        await asyncio.sleep(10)
    except SoftTimeLimitExceeded:
        log.append("soft")
        await asyncio.sleep(0)  # may await while cleaning up
        return "cleaned up"
    return "slept"


async def _running(log: list[str]) -> tuple[Interruptible, asyncio.Future[object]]:
    """A sleeper wrapped and running in a task of its own, waiting at its await."""
    started = asyncio.Event()
    wrapped = Interruptible(_sleeper(log, started))

    async def run() -> object:
        return await wrapped

    task = asyncio.ensure_future(run())
    await started.wait()
    return wrapped, task


def test_a_softened_cancellation_reaches_the_coroutine_as_a_soft_limit() -> None:
    log: list[str] = []

    async def main() -> object:
        wrapped, task = await _running(log)
        wrapped.soften()
        task.cancel()
        return await task

    assert asyncio.run(main()) == "cleaned up"
    assert log == ["soft"]


def test_a_plain_cancellation_passes_through_as_cancelled() -> None:
    async def main() -> None:
        _, task = await _running([])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"time_limit": 0}, "time_limit must be None or seconds > 0"),
        ({"soft_time_limit": -1}, "soft_time_limit must be None or seconds > 0"),
        ({"time_limit": "5"}, "time_limit must be None or seconds > 0"),
        ({"soft_time_limit": 5, "time_limit": 5}, "must be shorter than time_limit"),
    ],
)
def test_time_limits_that_cannot_work_are_refused(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        App("t", "memory://", **options)  # type: ignore[arg-type]
    app = App("t", "memory://")
    with pytest.raises(ConfigurationError, match=match):
        app.task(**options)(lambda: None)  # type: ignore[call-overload]


def test_a_task_takes_the_apps_time_limits_unless_it_sets_its_own() -> None:
    app = App("t", "memory://", soft_time_limit=5, time_limit=10)
    inherits = app.task(name="inherits")(lambda: None)
    own = app.task(name="own", time_limit=60)(lambda: None)
    assert (inherits.options.soft_time_limit, inherits.options.time_limit) == (5, 10)
    assert (own.options.soft_time_limit, own.options.time_limit) == (5, 60)


def test_a_soft_limit_with_another_cancellation_pending_is_a_cancellation() -> None:
    """The hard limit (or a revocation) landing with the soft one: the task is cancelled, not
    told to clean up and go on."""
    log: list[str] = []

    async def main() -> None:
        wrapped, task = await _running(log)
        wrapped.soften()
        task.cancel()  # the soft limit
        task.cancel()  # the hard one, in the same turn of the loop
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert log == []


def test_an_alarm_that_fails_does_not_silence_the_later_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alarms = Alarms("t")
    rang = threading.Event()

    def fails() -> None:
        raise RuntimeError("no thread to start")

    now = time.monotonic()
    alarms.at(now, fails)
    alarms.at(now + 0.01, rang.set)
    try:
        assert rang.wait(5)
    finally:
        alarms.close()
    assert "no thread to start" in caplog.text
