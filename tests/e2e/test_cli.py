"""`streamtasks dlq list|show|replay|purge` and `streamtasks status`, as a user runs them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from streamtasks import AsyncResult, TaskError
from tests.e2e.conftest import TASKS, Scene

pytestmark = pytest.mark.timeout(45)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition Redis offers no event for (a result status that changes twice)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def decline(scene: Scene, *customers: str) -> list[AsyncResult[str]]:
    """Run payments that the task rejects, so each ends in the dead-letter stream."""
    scene.worker("-n", "cashier")
    results = [scene.task("pay_unless_blocked").delay(c) for c in customers]
    for result in results:
        with pytest.raises(TaskError) as failed:
            result.get(timeout=10)
        assert (failed.value.status, failed.value.type_name) == ("DEAD", "Reject")
    return results


def test_dlq_list_json_shows_each_dead_letter_with_its_reason(scene: Scene) -> None:
    decline(scene, "alice", "bob")

    letters = scene.cli_json("dlq", "list")

    assert [(d["task"], d["call"]["args"]) for d in letters] == [
        ("e2e.pay_unless_blocked", ["alice"]),
        ("e2e.pay_unless_blocked", ["bob"]),
    ]
    for d in letters:
        assert (d["error_type"], d["error"], d["worker"]) == ("Reject", "card declined", "cashier")
        assert d["origin_stream"] == scene.stream
    assert scene.cli_json("status") == [
        {"queue": "default", "stream": 0, "pending": 0, "delayed": 0, "dead": 2}
    ]


def test_the_ids_dlq_list_json_prints_are_the_ones_dlq_show_takes(scene: Scene) -> None:
    decline(scene, "alice")
    (listed,) = scene.cli_json("dlq", "list")

    shown = scene.cli_json("dlq", "show", "--id", listed["id"])

    assert shown == listed
    assert "Reject: card declined" in shown["traceback"]


def test_a_replayed_dead_letter_runs_again_and_purge_empties_the_dlq(scene: Scene) -> None:
    alices_payment, _ = decline(scene, "alice", "bob")
    listing = scene.cli("dlq", "list", "-A", TASKS)
    assert listing.returncode == 0, listing.stderr
    assert "2 dead-lettered message(s)" in listing.stderr
    alice, bob = (line.split()[0] for line in listing.stdout.splitlines())
    assert "Reject: card declined" in listing.stdout

    missing = scene.cli("dlq", "show", "-A", TASKS, "--id", "1-1")
    assert missing.returncode == 1 and "no dead-lettered message 1-1" in missing.stderr

    scene.traces.allow("alice")
    assert scene.cli_json("dlq", "replay", "--id", alice) == {"replayed": [alice]}
    eventually(lambda: alices_payment.status == "SUCCESS")
    assert scene.traces.completions("alice") == 1
    assert scene.cli_json("status")[0]["dead"] == 1

    assert scene.cli_json("dlq", "purge", "--id", bob) == {"purged": 1}
    assert scene.cli_json("dlq", "list") == []
    assert scene.cli_json("status")[0]["dead"] == 0


def test_replay_and_purge_need_a_selection(scene: Scene) -> None:
    for command in ("replay", "purge"):
        done = scene.cli("dlq", command, "-A", TASKS)
        assert done.returncode == 2
        assert "give --id ID (repeatable) or --all" in done.stderr


def test_status_prints_a_table(scene: Scene) -> None:
    scene.task("square").delay(1)

    done = scene.cli("status", "-A", TASKS)

    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split() == ["queue", "stream", "pending", "delayed", "dead"]
    assert row.split() == ["default", "1", "0", "0", "0"]


def test_status_of_queues_nobody_used_yet_reads_zeros_and_writes_nothing(scene: Scene) -> None:
    done = scene.cli("status", "-A", TASKS, "--json")

    assert done.returncode == 0, done.stderr
    assert {row["stream"] for row in json.loads(done.stdout)} == {0}
    assert scene.redis.keys(f"{scene.name}:*") == []
