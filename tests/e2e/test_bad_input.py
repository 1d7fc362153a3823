"""What a user sees when they get the command line wrong, or garbage lands in a stream."""

from __future__ import annotations

import os
import uuid

import msgpack
import pytest

from streamtasks import TaskError
from tests.e2e.conftest import TASKS, Scene

pytestmark = pytest.mark.timeout(45)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-A", "nosuchmodule:app"], "cannot import module 'nosuchmodule'"),
        (["-A", "tests.e2e.tasks:nothing"], "has no streamtasks App named 'nothing'"),
        (["-A", TASKS, "-c", "0"], "0 is not in the range x>=1"),
    ],
    ids=["unknown-module", "unknown-attribute", "zero-concurrency"],
)
def test_a_bad_command_line_is_a_usage_error(scene: Scene, args: list[str], message: str) -> None:
    done = scene.cli("worker", *args)

    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("processes", ["1", "2"])
def test_an_unsupported_url_is_a_one_line_error(scene: Scene, processes: str) -> None:
    """With -p 2 too: refused before any child starts, not restarted over and over."""
    done = scene.cli("worker", "-A", TASKS, "-p", processes, "--url", "ftp://x")

    assert done.returncode == 2, done.stderr
    assert "unsupported URL 'ftp://x'" in done.stderr
    assert "restarting" not in done.stderr
    assert "Traceback" not in done.stderr


def test_garbage_in_a_stream_is_dead_lettered_and_the_worker_keeps_serving(
    scene: Scene,
) -> None:
    worker = scene.worker()
    call = msgpack.packb({"args": [3], "kwargs": {}, "headers": {}})
    orphan_id = uuid.uuid4().hex
    ids = [
        scene.redis.xadd(scene.stream, {os.urandom(8): os.urandom(64)}),
        scene.redis.xadd(
            scene.stream,
            {"schema_version": "99", "id": uuid.uuid4().hex, "task": "e2e.square", "call": call},
        ),
        scene.redis.xadd(
            scene.stream,
            {"schema_version": "1", "id": orphan_id, "task": "e2e.no_such_task", "call": call},
        ),
    ]

    with pytest.raises(TaskError) as failed:
        scene.app.AsyncResult(orphan_id).get(timeout=10)
    assert failed.value.status == "DEAD"
    assert "e2e.no_such_task" in failed.value.message
    assert scene.task("square").delay(7).get(timeout=10) == 49

    letters = scene.cli_json("dlq", "list")
    assert [d["origin_id"] for d in letters] == [i.decode() for i in ids]
    assert [d["error_type"] for d in letters] == ["DecodeError", "DecodeError", "UnknownTask"]
    assert "schema_version" in letters[0]["error"]
    assert "'99'" in letters[1]["error"]
    assert "e2e.no_such_task" in letters[2]["error"]
    assert worker.proc.poll() is None
    assert len(worker.lines(r"ERROR .* dead-lettered on attempt 1")) == 3
    assert scene.pending() == []
