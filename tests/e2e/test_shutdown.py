"""SIGTERM: a worker finishes and acks what it runs, exits 0; another SIGTERM a second or more
later exits at once, and two within a second (as `timeout` sends them) count as one."""

from __future__ import annotations

import ctypes
import signal
import time

import psutil
import pytest

from tests.e2e.conftest import Scene

pytestmark = pytest.mark.timeout(45)

STOPPING = r"stopping: waiting up to \S+ for \d+ running task\(s\) to finish"
# Two signals closer than a second are one; a test waits this long (real time: the worker is
# another process) before a signal that must count as a second one.
REPEAT_WINDOW = 1.1


def test_sigterm_finishes_and_acks_in_flight_tasks_then_exits_0(scene: Scene) -> None:
    worker = scene.worker("-c", "3")
    results = [scene.task("hold").delay(f"t{i}") for i in range(3)]
    for _ in range(3):
        scene.traces.started(timeout=10)

    worker.signal(signal.SIGTERM)
    [said] = worker.wait_for(STOPPING)
    assert "waiting up to 30s for 3 running task(s) to finish; SIGTERM again" in said
    scene.traces.open_gate()

    assert worker.wait(timeout=10) == 0
    assert [r.status for r in results] == ["SUCCESS"] * 3
    assert [r.get(timeout=1) for r in results] == ["t0", "t1", "t2"]
    assert scene.pending() == []
    assert scene.redis.xlen(scene.stream) == 0


def test_two_signals_within_a_second_count_as_one_as_timeout_sends_them(scene: Scene) -> None:
    worker = scene.worker("-c", "1")
    result = scene.task("hold").delay("order")
    scene.traces.started(timeout=10)

    worker.signal(signal.SIGTERM)
    worker.signal(signal.SIGTERM)
    worker.wait_for(STOPPING)
    scene.traces.open_gate()

    assert worker.wait(timeout=10) == 0
    assert result.get(timeout=1) == "order"
    assert "exiting now" not in worker.log


def test_a_second_sigterm_exits_at_once_and_leaves_the_entry_pending(scene: Scene) -> None:
    worker = scene.worker("-c", "1", "-n", "impatient")
    result = scene.task("hold").delay("long")
    scene.traces.started(timeout=10)

    worker.signal(signal.SIGTERM)
    worker.wait_for(STOPPING)
    time.sleep(REPEAT_WINDOW)  # the worker tells a repeat from a new signal by the time between
    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout=3) != 0
    pending = scene.pending()
    assert [(p["consumer"].decode(), p["times_delivered"]) for p in pending] == [("impatient", 1)]
    assert result.status == "PENDING"
    # The entry was left for recovery, not lost: the next worker runs it.
    scene.traces.open_gate()
    scene.worker("-n", "next")
    assert result.get(timeout=10) == "long"


def _signal_thread(pid: int, tid: int, signum: int) -> None:
    """Send a signal to one thread of a process (tgkill), as the kernel may deliver it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {signum}) failed")


def test_signals_taken_by_any_thread_of_the_worker_are_acted_on(scene: Scene) -> None:
    """The kernel may hand a process's signal to any of its threads, as it does with a second
    signal that arrives while the first is being handled. Handlers run on the main thread only,
    which must notice: the first SIGTERM stops the worker, the second exits at once."""
    worker = scene.worker("-c", "2", "-n", "any-thread")
    result = scene.task("hold").delay("x")
    scene.traces.started(timeout=10)

    def another_thread() -> int:
        return next(t.id for t in psutil.Process(worker.pid).threads() if t.id != worker.pid)

    _signal_thread(worker.pid, another_thread(), signal.SIGTERM)
    worker.wait_for(STOPPING)
    time.sleep(REPEAT_WINDOW)
    _signal_thread(worker.pid, another_thread(), signal.SIGTERM)

    assert worker.wait(timeout=3) == 128 + signal.SIGTERM
    assert result.status == "PENDING"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "systemd"])
def test_a_signal_to_a_supervised_workers_process_group_finishes_in_flight_tasks(
    scene: Scene, signum: int
) -> None:
    worker = scene.worker("-p", "2", "-c", "2", ready=2)
    results = [scene.task("hold").delay(f"t{i}") for i in range(4)]
    for _ in range(4):
        scene.traces.started(timeout=10)

    # Ctrl-C on a terminal, or systemd stopping the unit, signals the whole process group: the
    # supervisor and every child, each of which then also gets the supervisor's copy.
    children = worker.children()
    assert len(children) == 2
    worker.signal(signum)
    for child in children:
        child.send_signal(signum)
    worker.wait_for(STOPPING, count=2)
    scene.traces.open_gate()

    assert worker.wait(timeout=15) == 0
    assert not worker.lines("killing the workers now|exiting now"), "nothing was forced"
    assert [r.get(timeout=1) for r in results] == ["t0", "t1", "t2", "t3"]
    assert scene.pending() == []


def test_children_do_not_outlive_a_supervisor_killed_with_sigkill(scene: Scene) -> None:
    worker = scene.worker("-p", "2", ready=2)
    children = worker.children()
    assert len(children) == 2
    worker.kill()
    _, alive = psutil.wait_procs(children, timeout=15)
    assert alive == [], "orphaned workers would run on beside a new supervisor's"


def test_sigterm_waits_for_async_tasks_too_and_acks_them(scene: Scene) -> None:
    worker = scene.worker("-c", "1")
    results = [scene.task("async_hold").delay(f"a{i}") for i in range(5)]
    for _ in range(5):
        scene.traces.started(timeout=10)

    worker.signal(signal.SIGTERM)
    [said] = worker.wait_for(STOPPING)
    assert "for 5 running task(s)" in said
    scene.traces.open_gate()

    assert worker.wait(timeout=10) == 0
    assert [r.get(timeout=1) for r in results] == [f"a{i}" for i in range(5)]
    assert scene.pending() == []
