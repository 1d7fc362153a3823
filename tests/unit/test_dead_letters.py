"""The dead-letter API, `app.dead_letters(queue)`: list, get, replay (attempts reset), purge."""

from __future__ import annotations

import pytest

from streamtasks import App, ConfigurationError, Reject, TaskError, current_task
from tests.unit.support import LeapingClock, stream_len


class GatewayTimeout(Exception):
    pass


@pytest.fixture
def app(make_memory_app: object) -> App:
    return make_memory_app(clock=LeapingClock())  # type: ignore[operator, no-any-return]


def test_list_and_get_show_why_each_message_died(app: App) -> None:
    @app.task(name="pay", queue="payments")
    def pay(order_id: str) -> None:
        raise Reject(f"card declined for {order_id}")

    results = [pay.delay("o-1"), pay.delay("o-2")]
    app.Worker().drain(timeout=5)
    dead = app.dead_letters("payments")
    assert len(dead) == 2
    entries = dead.list()
    assert [e.get("id") for e in entries] == [r.id for r in results]
    assert [e.reason for e in entries] == [
        "Reject: card declined for o-1",
        "Reject: card declined for o-2",
    ]
    assert [e.id for e in dead.list(limit=1)] == [entries[0].id]
    found = dead.get(entries[1].id)
    assert found is not None and found.fields == entries[1].fields
    assert dead.get("0-1") is None
    view = entries[0].as_dict()
    assert view["call"]["args"] == ["o-1"]
    assert view["error_type"] == "Reject"
    assert len(app.dead_letters()) == 0, "other queues have their own dead-letter stream"


def test_replay_re_enqueues_with_attempts_reset_and_records_where_it_came_from(app: App) -> None:
    runs: list[tuple[int, int]] = []
    healthy = {"gateway": False}

    @app.task(name="charge", autoretry_for=(GatewayTimeout,), max_retries=2)
    def charge(amount: int) -> int:
        context = current_task()
        runs.append((context.attempt, context.retries_left))
        if not healthy["gateway"]:
            raise GatewayTimeout("gateway down")
        return amount

    result = charge.delay(42)
    app.Worker().drain(timeout=5)
    assert runs == [(0, 2), (1, 1), (2, 0)]
    [dead] = app.dead_letters().list()
    assert dead.get("attempts") == "3"

    healthy["gateway"] = True
    assert app.dead_letters().replay([dead.id]) == [dead.id]
    assert len(app.dead_letters()) == 0
    [(_, fields)] = app.broker.client.xrange(app.keys("default").stream)
    assert fields[b"replayed_from"] == dead.id.encode()
    assert b"replayed_at" in fields
    assert b"attempt" not in fields and b"error_type" not in fields
    assert fields[b"id"] == result.id.encode(), "the same task id, so its AsyncResult still works"

    app.Worker().drain(timeout=5)
    assert runs[3:] == [(0, 2)], "attempts were reset: the replay gets every retry again"
    assert result.status == "SUCCESS"


def test_get_after_a_successful_replay_returns_the_new_result(app: App) -> None:
    """The producer's AsyncResult must agree with its status once the replay succeeded."""
    fail = {"now": True}

    @app.task(name="ship")
    def ship() -> str:
        if fail["now"]:
            raise Reject("address missing")
        return "shipped"

    result = ship.delay()
    app.Worker().drain(timeout=5)
    with pytest.raises(TaskError):
        result.get(timeout=1)
    fail["now"] = False
    app.dead_letters().replay()
    app.Worker().drain(timeout=5)
    assert result.status == "SUCCESS"
    assert result.get(timeout=1) == "shipped"


def test_replay_of_unknown_ids_moves_nothing(app: App) -> None:
    assert app.dead_letters().replay(["1-1"]) == []
    assert app.dead_letters().replay() == []
    assert stream_len(app) == 0


def test_purge_deletes_chosen_entries_or_all(app: App) -> None:
    @app.task(name="pay")
    def pay(n: int) -> None:
        raise Reject(str(n))

    pay.map(range(4))
    app.Worker().drain(timeout=5)
    dead = app.dead_letters()
    first, second, *_ = dead.list()
    assert dead.purge([first.id]) == 1
    assert dead.get(first.id) is None
    assert dead.purge([]) == 0
    assert len(dead) == 3
    assert dead.purge() == 3
    assert len(dead) == 0
    assert dead.get(second.id) is None
    assert dead.replay() == []


def test_replay_and_purge_refuse_ids_that_are_not_entry_ids_and_touch_nothing(
    memory_app: App,
) -> None:
    @memory_app.task(name="doomed")
    def doomed() -> None:
        raise Reject("no")

    doomed.delay()
    memory_app.Worker().drain(timeout=5)
    letters = memory_app.dead_letters()
    [good] = [d.id for d in letters.list()]
    with pytest.raises(ConfigurationError, match="not-an-id"):
        letters.replay([good, "not-an-id"])
    with pytest.raises(ConfigurationError, match="nope"):
        letters.purge([good, "nope"])
    assert [d.id for d in letters.list()] == [good]
    assert memory_app.broker.client.xlen(memory_app.keys("default").stream) == 0
