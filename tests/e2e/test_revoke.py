"""Revoke and expiry, with real worker processes: a revoked or expired task never starts, the
revocation lives in Redis (it outlives the worker), and a running task is stopped by it."""

from __future__ import annotations

import datetime as dt

import pytest

from streamtasks import TaskRevoked
from tests.e2e.conftest import Scene

pytestmark = pytest.mark.timeout(45)


def test_a_task_revoked_while_queued_never_starts_even_on_a_worker_started_later(
    scene: Scene,
) -> None:
    revoked = scene.task("record").delay("revoked")
    kept = scene.task("record").delay("kept")
    revoked.revoke()

    worker = scene.worker()
    assert kept.get(timeout=10) == "kept"
    with pytest.raises(TaskRevoked):
        revoked.get(timeout=10)
    assert revoked.status == "REVOKED"
    assert scene.traces.runs("revoked") == 0
    assert scene.pending() == [] and scene.redis.xlen(scene.stream) == 0
    worker.wait_for(rf"e2e\.record\[{revoked.id}\] not run: revoked")


def test_a_delayed_task_revoked_before_it_is_due_never_starts(scene: Scene) -> None:
    scene.worker()
    revoked = scene.task("record").apply_async(("later",), countdown=0.3)
    after = scene.task("record").apply_async(("after",), countdown=0.4)
    revoked.revoke()

    assert after.get(timeout=10) == "after"
    with pytest.raises(TaskRevoked):
        revoked.get(timeout=10)
    assert scene.traces.runs("later") == 0


def test_a_task_not_started_before_it_expires_is_not_run(scene: Scene) -> None:
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    stale = scene.task("record").apply_async(("stale",), expires=past)
    fresh = scene.task("record").apply_async(("fresh",), expires=60)
    scene.worker()

    assert fresh.get(timeout=10) == "fresh"
    with pytest.raises(TaskRevoked, match="expired at"):
        stale.get(timeout=10)
    assert stale.status == "REVOKED"
    assert scene.traces.runs("stale") == 0


@pytest.mark.parametrize(
    ("task", "ended", "notes"),
    [
        ("watch", "stopped on request", []),  # looks at current_task().revoked
        ("async_wait", "revoked while it ran", ["cancelled"]),  # cancelled at its await
        # A plain task with a soft limit gets SoftTimeLimitExceeded raised inside at once.
        ("stop_when_revoked", "revoked while it ran", ["stopped: RevokedWhileRunning"]),
    ],
)
def test_a_running_task_is_stopped_by_its_revocation(
    scene: Scene, task: str, ended: str, notes: list[str]
) -> None:
    worker = scene.worker()
    running = scene.task(task).delay("long")
    scene.traces.started(timeout=10)

    running.revoke()
    with pytest.raises(TaskRevoked, match=ended):
        running.get(timeout=10)
    assert running.status == "REVOKED"
    assert scene.traces.notes("long") == notes
    worker.wait_for(rf"{task}\[{running.id}\] stopped: {ended}")
