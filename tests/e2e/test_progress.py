"""Progress a task reports while it runs in a worker process, read by the producer's process."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Scene

pytestmark = pytest.mark.timeout(45)


@pytest.mark.parametrize("task", ["import_catalog", "async_import_catalog"])
def test_the_producer_sees_the_latest_progress_and_get_is_unaffected(
    scene: Scene, task: str
) -> None:
    result = scene.task(task).delay("catalog", 1000)
    assert result.progress is None, "nothing reported before the task starts"
    scene.worker()

    scene.traces.started(timeout=10)
    assert result.progress == {"done": 500, "of": 1000}
    assert result.status == "PENDING"
    scene.traces.open_gate()

    assert result.get(timeout=10) == 1000
    assert result.progress == {"done": 1000, "of": 1000}
