"""kill -9 a worker with tasks in flight: nothing is lost, and keyed tasks still run once."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from streamtasks import AsyncResult
from tests.e2e.conftest import Scene
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(45)


def test_kill_9_leaves_in_flight_entries_pending_and_a_new_worker_finishes_them(
    scene: Scene,
) -> None:
    doomed = scene.worker("-c", "4", "-n", "doomed")
    hold, charge = scene.task("hold"), scene.task("charge")
    results = []
    for i in range(4):
        results.append(hold.delay(f"h{i}"))
        results.append(charge.delay(f"o{i}", 100 * (i + 1), held=True))
    running = {scene.traces.started(timeout=10) for _ in range(4)}

    doomed.kill()

    pending = scene.pending()
    assert {p["consumer"].decode() for p in pending} == {"doomed"}
    assert len(pending) >= len(running)
    assert all(not r.ready() for r in results)

    scene.traces.open_gate()
    rescuer = scene.worker("-c", "4", "-n", "rescuer")
    began = time.monotonic()
    values = [r.get(timeout=15) for r in results]
    recovery = time.monotonic() - began

    assert values == [
        v for i in range(4) for v in (f"h{i}", {"order": f"o{i}", "charged": 100 * (i + 1)})
    ]
    rescuer.wait_for("took over")
    # The tasks that were running when the worker died ran again; nothing ran to the end twice.
    tokens = [t for i in range(4) for t in (f"h{i}", f"o{i}")]
    assert {t: scene.traces.completions(t) for t in tokens} == dict.fromkeys(tokens, 1)
    assert {t for t in tokens if scene.traces.runs(t) == 2} == running
    assert scene.traces.ledger() == {f"o{i}": 100 * (i + 1) for i in range(4)}
    assert scene.pending() == []
    # Reclaimed once idle for the visibility timeout (1 s): the target is that plus under 1 s.
    assert recovery < scene.visibility + 2.0, f"recovery took {recovery:.2f}s"


def test_kill_9_mid_batch_loses_nothing_and_keyed_tasks_run_once(scene: Scene) -> None:
    worker = scene.worker("-c", "4", "-n", "first")
    record, hold, charge = scene.task("record"), scene.task("hold"), scene.task("charge")

    def mixed(prefix: str) -> dict[str, AsyncResult[Any]]:
        """Unkeyed records and keyed payments, interleaved; by token."""
        out: dict[str, AsyncResult[Any]] = {}
        for i in range(15):
            out[f"{prefix}-r{i}"] = record.delay(f"{prefix}-r{i}")
            out[f"{prefix}-o{i}"] = charge.delay(f"{prefix}-o{i}", 10 + i)
        return out

    before = mixed("before")
    # Four tasks that block every thread, so the kill lands while they run.
    blocking = [hold.delay("held-0"), charge.delay("held-o1", 7, held=True)]
    blocking += [hold.delay("held-2"), charge.delay("held-o3", 9, held=True)]
    after = mixed("after")
    # A producer that retries a payment enqueues nothing new: same key, same task.
    assert charge.delay("before-o3", 13).id == before["before-o3"].id

    # Everything before the blocking tasks has finished and been settled, and the threads are
    # blocked, so no run is between its side effect and its ack when the kill lands: the one
    # window where at-least-once delivery may legitimately repeat a task.
    assert len([r.get(timeout=15) for r in before.values()]) == 30
    for _ in range(4):
        scene.traces.started(timeout=10)
    worker.kill()
    assert {p["consumer"].decode() for p in scene.pending()} == {"first"}

    scene.traces.open_gate()
    scene.worker("-c", "4", "-n", "second")
    for r in [*blocking, *after.values()]:
        r.get(timeout=15)

    tokens = [*before, *after, "held-0", "held-o1", "held-2", "held-o3"]
    assert {t: scene.traces.completions(t) for t in tokens} == dict.fromkeys(tokens, 1)
    ledger = {f"{p}-o{i}": 10 + i for p in ("before", "after") for i in range(15)}
    assert scene.traces.ledger() == {**ledger, "held-o1": 7, "held-o3": 9}
    assert scene.pending() == []


def test_a_worker_restarted_under_its_name_reruns_what_it_held_at_once(
    redis_server: RedisServer, make_scene: Callable[..., Scene]
) -> None:
    # A visibility timeout far longer than the test: only the name can bring the entries back.
    scene = make_scene(redis_server, visibility=60.0)
    worker = scene.worker("-c", "2", "-n", "steady")
    results = [scene.task("hold").delay("a"), scene.task("hold").delay("b")]
    scene.traces.started(timeout=10)
    scene.traces.started(timeout=10)
    worker.kill()
    scene.traces.open_gate()

    scene.worker("-c", "2", "-n", "steady")

    # Within 10 s, far sooner than the 60 s after which any worker could have reclaimed them.
    assert [r.get(timeout=10) for r in results] == ["a", "b"]
    assert (scene.traces.runs("a"), scene.traces.runs("b")) == (2, 2)


def test_the_supervisor_restarts_a_killed_process_and_stops_cleanly_on_sigterm(
    scene: Scene,
) -> None:
    pool = scene.worker("-p", "2", "-c", "2", "-n", "pool", ready=2)
    results = [scene.task("hold").delay(f"t{i}") for i in range(4)]
    for _ in range(4):
        scene.traces.started(timeout=10)
    victim, survivor = pool.children()

    victim.kill()

    pool.wait_for(r"worker pool-\d exited with -9")
    pool.wait_for("serving", count=3)
    scene.traces.open_gate()
    assert [r.get(timeout=15) for r in results] == [f"t{i}" for i in range(4)]
    assert [scene.traces.completions(f"t{i}") for i in range(4)] == [1, 1, 1, 1]
    assert sum(scene.traces.runs(f"t{i}") for i in range(4)) == 6
    assert survivor.is_running()
    children = pool.children()
    assert len(children) == 2 and victim.pid not in {c.pid for c in children}

    pool.signal(15)

    assert pool.wait(timeout=15) == 0
    assert len(pool.wait_for(r"worker pool-\d stopped", count=2)) == 2
    assert not any(c.is_running() for c in children)
    assert scene.pending() == []


def test_a_task_three_times_longer_than_its_visibility_timeout_runs_once(scene: Scene) -> None:
    left = scene.worker("-c", "2", "-n", "left")
    right = scene.worker("-c", "2", "-n", "right")

    ran_on = scene.task("busy").delay("long", 3 * scene.visibility + 0.5).get(timeout=15)

    assert ran_on in ("left", "right")
    assert scene.traces.runs("long") == 1
    for worker in (left, right):
        assert worker.lines("took over|taken over") == [], worker.log


def test_kill_9_with_async_tasks_in_flight_loses_none_of_them(scene: Scene) -> None:
    doomed = scene.worker("-c", "1", "-n", "doomed")
    results = [scene.task("async_hold").delay(f"a{i}") for i in range(30)]
    running = {scene.traces.started(timeout=10) for _ in range(30)}
    assert len(running) == 30, "all thirty wait at once, on one event loop"

    doomed.kill()

    pending = scene.pending()
    assert len(pending) == 30 and {p["consumer"].decode() for p in pending} == {"doomed"}
    scene.traces.open_gate()
    scene.worker("-c", "1", "-n", "rescuer")
    assert sorted(r.get(timeout=15) for r in results) == sorted(f"a{i}" for i in range(30))
    assert all(scene.traces.completions(f"a{i}") == 1 for i in range(30))
    assert scene.pending() == []
