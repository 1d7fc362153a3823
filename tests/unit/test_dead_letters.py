"""The dead-letter API, `app.dead_letters(queue)`: list, get, replay (attempts reset), purge."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal
from typing import NamedTuple
from uuid import UUID

import msgpack
import pytest

from streamtasks import App, ConfigurationError, Reject, TaskError, current_task
from streamtasks.deadletters import jsonable, locate
from streamtasks.message import SCHEMA_VERSION
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
    assert runs == [(1, 2), (2, 1), (3, 0)]
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
    assert runs[3:] == [(1, 2)], "attempts were reset: the replay gets every retry again"
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


def test_as_dict_is_the_json_view_counts_as_ints_and_times_in_iso_8601(app: App) -> None:
    @app.task(name="charge", queue="payments", autoretry_for=(GatewayTimeout,), max_retries=2)
    def charge(amount: int) -> None:
        raise GatewayTimeout("gateway down")

    result = charge.delay(42)
    app.Worker(["payments"]).drain(timeout=5)
    [dead] = app.dead_letters("payments").list()

    view = dead.as_dict()

    assert list(view) == [
        *("id", "queue", "task", "task_id", "attempts", "error_type", "error", "traceback"),
        *("failed_at", "worker", "origin_stream", "origin_id", "idempotency_key", "call"),
        "fields",
    ]
    assert (view["id"], view["queue"], view["task"], view["task_id"]) == (
        dead.id,
        "payments",
        "charge",
        result.id,
    )
    assert view["attempts"] == 3, "an int: how many runs were made"
    assert "attempt" not in view and "attempt" not in view["fields"]
    failed_at = dt.datetime.fromisoformat(view["failed_at"])
    assert failed_at.utcoffset() == dt.timedelta(0)
    assert round(failed_at.timestamp() * 1000) == int(dead.get("failed_at"))
    assert failed_at == dead.failed_at
    assert view["call"] == {"args": [42], "kwargs": {}, "headers": {}}
    assert view["idempotency_key"] is None
    assert view["fields"] == {"schema_version": SCHEMA_VERSION}
    assert json.loads(json.dumps(view)) == view, "plain JSON, nothing left to a default="


def test_as_dict_of_a_replayed_message_that_died_again_says_where_it_came_from(app: App) -> None:
    @app.task(name="ship")
    def ship() -> None:
        raise Reject("address missing")

    ship.delay()
    app.Worker().drain(timeout=5)
    [first] = app.dead_letters().list()
    app.dead_letters().replay([first.id])
    app.Worker().drain(timeout=5)
    [again] = app.dead_letters().list()

    view = again.as_dict()

    assert view["replayed_from"] == first.id
    assert dt.datetime.fromisoformat(view["replayed_at"]).utcoffset() == dt.timedelta(0)
    assert view["attempts"] == 1, "the replay started its attempts over"


def test_as_dict_of_garbage_keeps_every_field_and_never_raises(app: App) -> None:
    dlq = app.keys("default").dead
    app.broker.client.xadd(
        dlq,
        {
            b"\xff\xfe": b"\xff\x00",
            b"attempts": b"many",
            b"failed_at": b"soon",
            b"call": b"\xc1",
            b"error_type": b"DecodeError",
        },
        id="5-0",
    )
    app.broker.client.xadd(dlq, {b"call": msgpack.packb([1, 2])}, id="6-0")
    garbage, listed = app.dead_letters().list()

    view = garbage.as_dict()

    assert (view["task"], view["attempts"], view["failed_at"]) == (None, None, None)
    assert view["fields"] == {
        "b'\\xff\\xfe'": "b'\\xff\\x00'",
        "attempts": "many",
        "failed_at": "soon",
    }
    assert view["call"]["undecodable"].startswith("not valid msgpack")
    assert listed.as_dict()["call"] == {"undecodable": "a msgpack list, not a map"}
    assert (garbage.task, garbage.reason, garbage.attempts) == ("?", "DecodeError: ", None)
    json.dumps(view)


def test_jsonable_makes_what_json_cannot_carry_readable() -> None:
    class Money(NamedTuple):
        cents: int

    when = dt.datetime(2026, 12, 1, 21, 55, 11, tzinfo=dt.timezone.utc)
    value = {
        b"raw": [b"\x00", bytearray(b"a")],
        7: ({3, 1, 2}, frozenset({"x"}), (1, 2)),
        "when": [when, when.date(), when.time()],
        "other": [Decimal("1.50"), UUID(int=1), dt.timedelta(hours=2), Money(5), math.nan],
    }

    assert jsonable(value) == {
        "b'raw'": ["b'\\x00'", "bytearray(b'a')"],
        "7": [[1, 2, 3], ["x"], [1, 2]],
        "when": ["2026-12-01T21:55:11+00:00", "2026-12-01", "21:55:11"],
        "other": [
            "1.50",
            "00000000-0000-0000-0000-000000000001",
            "2:00:00",
            "Money(cents=5)",
            "nan",
        ],
    }


def test_get_refuses_what_is_not_an_entry_id_instead_of_asking_redis(app: App) -> None:
    letters = app.dead_letters()
    for bad in ("nope", "1-x", "99999999999999999999-0", "1-99999999999999999999"):
        with pytest.raises(ConfigurationError, match=r"not a stream entry id \(like"):
            letters.get(bad)
    assert letters.get("18446744073709551615-0") is None, "the largest id Redis takes"


def test_locate_names_every_queue_holding_each_id(app: App) -> None:
    for queue, entry_id in [("default", "5-0"), ("refunds", "5-0"), ("refunds", "6-0")]:
        app.broker.client.xadd(app.keys(queue).dead, {"task": "t"}, id=entry_id)
    streams = [app.dead_letters("default"), app.dead_letters("refunds")]

    found = locate(streams, ["5-0", "6-0", "7-0", "6-0"])

    assert found == {"5-0": ["default", "refunds"], "6-0": ["refunds"], "7-0": []}
    with pytest.raises(ConfigurationError, match=r"not stream entry ids .*: x, y$"):
        locate(streams, ["5-0", "x", "y"])
