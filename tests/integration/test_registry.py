"""The registry of live workers on a real Redis: a name held by a live worker is refused, a dead
holder on this host is taken over at once, a record lapses without its beat, and what `status`
reads of the queues and workers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from streamtasks import App
from streamtasks.cli.status import snapshot
from streamtasks.keys import WorkerKeys
from streamtasks.registry import TTL, NameTaken, Registration, node
from streamtasks.testing import ManualClock


def registration(app: App, name: str = "cashier-1") -> Registration:
    return Registration(app, name, queues=["payments"], concurrency=4, async_concurrency=0)


def hold(app: App, name: str, **record: str) -> None:
    """Write a live record for `name` as another worker process would."""
    found = app.broker.register(
        WorkerKeys(app.name),
        name,
        "start",
        "another-instance",
        now_ms=int(app.clock() * 1000),
        ttl_ms=int(TTL * 1000),
        record={"name": name, **record},
    )
    assert found is None


def test_a_name_a_live_worker_holds_is_refused_with_who_holds_it(redis_app: App) -> None:
    hold(redis_app, "cashier-1", host="till-7", pid="4242")

    held = r"'cashier-1' is held by a live worker \(pid 4242 on till-7"
    with pytest.raises(NameTaken, match=held):
        registration(redis_app).claim({}, threading.Event(), wait=0)


def gone_pid() -> str:
    """The pid of a process that has exited."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def test_a_holder_here_whose_process_is_gone_is_taken_over_at_once_by_one_namesake(
    redis_app: App,
) -> None:
    hold(redis_app, "cashier-1", node=node(), pid=gone_pid())
    mine, twin = registration(redis_app), registration(redis_app)

    assert mine.claim({"done": 0}, threading.Event(), wait=60)
    with pytest.raises(NameTaken):  # it saw the same dead holder, but mine took the name first
        twin.claim({}, threading.Event(), wait=60)

    [record] = redis_app.broker.workers(WorkerKeys(redis_app.name))
    assert (record["pid"], record["instance"]) == (str(os.getpid()), mine.instance)
    mine.release()


@pytest.mark.timeout(10)
def test_a_live_holder_here_refuses_the_name_at_once(redis_app: App) -> None:
    hold(redis_app, "cashier-1", node=node(), pid=str(os.getppid()), host="here")

    with pytest.raises(NameTaken, match=rf"pid {os.getppid()} on here"):
        registration(redis_app).claim({}, threading.Event(), wait=60)


@pytest.mark.timeout(10)
def test_a_worker_stopped_while_it_waits_for_a_name_gives_up_quietly(redis_app: App) -> None:
    hold(redis_app, "cashier-1", node="elsewhere", host="till-7", pid="4242")
    stopped = threading.Event()
    stopped.set()

    assert registration(redis_app).claim({}, stopped, wait=60) is False


def test_a_record_lives_as_long_as_its_beat_and_goes_when_its_worker_stops(
    redis_app: App,
) -> None:
    mine = registration(redis_app)
    mine.claim({"in_flight": 2, "done": 7}, threading.Event(), wait=0)
    key = WorkerKeys(redis_app.name).worker("cashier-1")
    assert 0 < redis_app.broker.client.pttl(key) <= TTL * 1000
    [record] = redis_app.broker.workers(WorkerKeys(redis_app.name))
    assert (record["queues"], record["in_flight"], record["done"]) == ("payments", "2", "7")

    mine.release()
    assert redis_app.broker.workers(WorkerKeys(redis_app.name)) == []


def test_a_worker_whose_name_was_given_to_another_stops_at_its_next_beat(
    redis_app: App,
) -> None:
    mine = registration(redis_app)
    mine.claim({}, threading.Event(), wait=0)
    redis_app.broker.client.delete(WorkerKeys(redis_app.name).worker("cashier-1"))  # lapsed
    hold(redis_app, "cashier-1", host="till-7", pid="4242")

    with pytest.raises(NameTaken, match="stopped beating"):
        mine.beat({})
    mine.release()  # not its record any more: left alone
    assert [r["host"] for r in redis_app.broker.workers(WorkerKeys(redis_app.name))] == ["till-7"]


def test_status_counts_waiting_apart_from_in_flight_and_the_runs_of_each_minute(
    make_app: Any, app_name: str
) -> None:
    clock = ManualClock(now=1_800_000_000.0)  # the start of a minute
    app: App = make_app(app_name, clock=clock)
    square = app.task(name="square")(lambda x: x * x)
    square.map(range(30))
    app.Worker().drain(timeout=10)
    square.map(range(4))
    clock.advance(30)

    found = snapshot(app, ["default"])

    (queue,) = found["queues"]
    assert (queue["waiting"], queue["in_flight"], queue["consumers"]) == (4, 0, 1)
    assert queue["oldest_waiting_s"] is not None
    assert (queue["done_per_min_1m"], queue["done_per_min_5m"]) == (30, 6)
    clock.advance(60)  # half of that minute's runs are in the last 60 s
    assert snapshot(app, ["default"])["queues"][0]["done_per_min_1m"] == 15
    assert found["workers"] == [], "a drained worker stopped and left the registry"
