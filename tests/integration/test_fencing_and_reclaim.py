"""Crash recovery on a real Redis: reclaim after the visibility timeout, fenced settles, leases,
poison messages and idle-consumer pruning, driven through the broker as separate consumers."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from streamtasks import App, TaskError
from streamtasks.keys import GROUP
from streamtasks.message import netstring, pack
from streamtasks.policy import delivered_too_often
from streamtasks.protocol import GONE, REFUSED, SettleRecord
from tests.integration.conftest import Consumer
from tests.unit.support import running, stream_len, wait_until


def success(app: App, entry_id: str, task_id: str) -> SettleRecord:
    key = app.keys("default").result(task_id)
    return SettleRecord(entry_id, "a", key, 60_000, "SUCCESS", pack("done"))


def test_a_consumer_whose_entry_was_reclaimed_cannot_settle_it(redis_app: App) -> None:
    task = redis_app.task(name="ship")(lambda: None)
    result = task.delay()
    a, b = Consumer(redis_app, "worker-a"), Consumer(redis_app, "worker-b")
    [entry] = a.read()
    a.age(entry, 60_000)
    assert [e for e, _ in b.reclaim().entries] == [entry]
    assert a.pending() == {entry: "worker-b"}

    broker, keys = redis_app.broker, redis_app.keys("default")
    dead = SettleRecord(entry, "d", None, 0, "DEAD", b"", None, netstring(["error_type", "X"]))
    retry = SettleRecord(entry, "r", None, 0, "RETRY", b"", None, b"1:" + netstring(["a", "b"]))
    assert broker.settle(keys, "worker-a", [success(redis_app, entry, result.id)]) == [False]
    assert broker.settle(keys, "worker-a", [dead, retry]) == [False, False]
    assert a.pending() == {entry: "worker-b"}, "A acked nothing"
    assert stream_len(redis_app) == 1
    assert len(redis_app.dead_letters()) == 0, "A dead-lettered nothing"
    assert redis_app.broker.client.zcard(keys.delayed) == 0, "A scheduled no retry"
    assert result.status == "PENDING", "A wrote no result"

    assert broker.settle(keys, "worker-b", [success(redis_app, entry, result.id)]) == [True]
    assert a.pending() == {}
    assert stream_len(redis_app) == 0
    assert result.get(timeout=1) == "done"


def test_a_fenced_settle_does_not_block_the_rest_of_its_batch(redis_app: App) -> None:
    task = redis_app.task(name="ship")(lambda n: None)
    results = task.map(range(2))
    a, b = Consumer(redis_app, "worker-a"), Consumer(redis_app, "worker-b")
    lost, kept = a.read()
    a.age(lost, 60_000)
    b.reclaim(default_timeout_ms=30_000)
    records = [success(redis_app, lost, results[0].id), success(redis_app, kept, results[1].id)]
    assert redis_app.broker.settle(redis_app.keys("default"), "worker-a", records) == [False, True]
    assert a.pending() == {lost: "worker-b"}


def test_reclaim_honours_each_tasks_visibility_timeout_and_the_app_default(
    make_app: object, app_name: str
) -> None:
    app: App = make_app(app_name, visibility_timeout=5.0)  # type: ignore[operator]
    quick = app.task(name="quick", visibility_timeout=0.5)(lambda: None)
    slow = app.task(name="slow", visibility_timeout=120.0)(lambda: None)
    plain = app.task(name="plain")(lambda: None)
    quick.delay(), slow.delay(), plain.delay()
    ghost, live = Consumer(app, "ghost"), Consumer(app, "live")
    q, s, p = ghost.read()
    timeouts = {"quick": 500, "slow": 120_000}

    for entry in (q, s, p):
        ghost.age(entry, 400)
    assert live.reclaim(timeouts_ms=timeouts).entries == []

    for entry in (q, s, p):
        ghost.age(entry, 1_000)
    assert [e for e, _ in live.reclaim(timeouts_ms=timeouts).entries] == [q]

    for entry in (s, p):
        ghost.age(entry, 6_000)
    assert [e for e, _ in live.reclaim(timeouts_ms=timeouts).entries] == [p]

    ghost.age(s, 121_000)
    assert [e for e, _ in live.reclaim(timeouts_ms=timeouts).entries] == [s]
    assert ghost.pending() == {q: "live", s: "live", p: "live"}


def test_reclaim_claims_no_more_than_the_room_it_is_given_and_resumes_after(
    redis_app: App,
) -> None:
    task = redis_app.task(name="t")(lambda: None)
    for _ in range(5):
        task.delay()
    ghost, live = Consumer(redis_app, "ghost"), Consumer(redis_app, "live")
    entries = ghost.read()
    for entry in entries:
        ghost.age(entry, 60_000)

    first = live.reclaim(limit=2)
    assert [e for e, _ in first.entries] == entries[:2]
    assert ghost.pending() == dict.fromkeys(entries[:2], "live") | dict.fromkeys(
        entries[2:], "ghost"
    )
    second = live.reclaim(cursor=first.cursor, limit=2)
    assert [e for e, _ in second.entries] == entries[2:4]
    third = live.reclaim(cursor=second.cursor, limit=2)
    assert [e for e, _ in third.entries] == entries[4:]
    assert third.cursor == "-", "the scan starts over once it has seen the whole pending list"


def test_a_worker_reclaims_by_each_tasks_own_visibility_timeout(
    make_app: object, app_name: str
) -> None:
    app: App = make_app(app_name, visibility_timeout=30.0)  # type: ignore[operator]
    ran: list[str] = []
    quick = app.task(name="quick", visibility_timeout=0.5)(lambda: ran.append("quick"))
    plain = app.task(name="plain")(lambda: ran.append("plain"))
    quick_result, _ = quick.delay(), plain.delay()
    ghost = Consumer(app, "ghost")
    q, p = ghost.read()
    ghost.age(q, 2_000)
    ghost.age(p, 2_000)
    with running(app.Worker(name="live", reclaim_interval=0.05)):
        quick_result.get(timeout=5)
    assert ran == ["quick"]
    assert ghost.pending() == {p: "ghost"}, "2 s idle is under the app's 30 s default"


def test_a_poison_entry_goes_to_the_dead_letter_stream_after_max_deliveries(
    make_app: object, app_name: str
) -> None:
    app: App = make_app(app_name, max_deliveries=3)  # type: ignore[operator]
    task = app.task(name="explodes")(lambda payload: None)
    result = task.delay("payload")
    deliveries = Counter[str]()
    first = Consumer(app, "w0")
    [entry] = first.read()
    deliveries[entry] += 1
    holder = first
    for n in (1, 2):
        holder.age(entry, 60_000)  # the worker holding it died
        nxt = Consumer(app, f"w{n}")
        found = nxt.reclaim(max_deliveries=3)
        assert [e for e, _ in found.entries] == [entry]
        deliveries[entry] += 1
        holder = nxt
    holder.age(entry, 60_000)
    found = Consumer(app, "w3").reclaim(max_deliveries=3)
    assert found.entries == []
    assert [(b.task, b.attempt, b.deliveries) for b in found.dead] == [("explodes", 1, 3)]
    assert deliveries == {entry: 3}

    [dead] = app.dead_letters().list()
    assert dead.get("error_type") == "MaxDeliveriesExceeded"
    assert (dead.get("attempts"), dead.get("deliveries")) == ("1", "3")
    minute = int(app.clock() // 60)  # this minute's count, or the last one's just after it
    counts = [app.broker.client.get(app.keys("default").done(m)) for m in (minute, minute - 1)]
    assert sum(int(c or 0) for c in counts) == 1, "counted as a run that ended, in status"
    assert dead.get("worker") == "w2"
    assert dead.get("origin_id") == entry
    assert dead.get("origin_stream") == app.keys("default").stream
    assert dead.get("id") == result.id and dead.get("task") == "explodes"
    assert stream_len(app) == 0
    assert first.pending() == {}


def test_a_poison_entry_tells_its_producer_it_is_dead(make_app: object, app_name: str) -> None:
    """Dead letters of every kind give AsyncResult status DEAD, this one included."""
    app: App = make_app(app_name, max_deliveries=1)  # type: ignore[operator]
    result = app.task(name="explodes")(lambda: None).delay()
    ghost = Consumer(app, "ghost")
    [entry] = ghost.read()
    ghost.age(entry, 60_000)
    assert len(Consumer(app, "live").reclaim(max_deliveries=1).dead) == 1
    assert result.status == "DEAD"
    with pytest.raises(TaskError) as info:
        result.get(timeout=1)
    assert info.value.type_name == "MaxDeliveriesExceeded"


def test_renewing_a_lease_keeps_an_entry_and_handing_it_back_frees_it_at_once(
    redis_app: App,
) -> None:
    redis_app.task(name="long")(lambda: None).delay()
    a, b = Consumer(redis_app, "worker-a"), Consumer(redis_app, "worker-b")
    [entry] = a.read()
    a.age(entry, 60_000)  # long past the 30 s visibility timeout...
    keys = redis_app.keys("default")
    assert redis_app.broker.lease(keys, "worker-a", [entry], hand_back=False) == set()
    assert b.reclaim().entries == [], "...but the lease was just renewed"
    [row] = redis_app.broker.client.xpending_range(keys.stream, GROUP, "-", "+", 1)
    assert row["times_delivered"] == 1, "renewing does not count as a delivery"

    assert redis_app.broker.lease(keys, "worker-a", [entry], hand_back=True) == set()
    assert [e for e, _ in b.reclaim().entries] == [entry], "handed back: taken at once"
    assert redis_app.broker.lease(keys, "worker-a", [entry], hand_back=False) == {entry}
    assert a.pending() == {entry: "worker-b"}, "A's lease cannot take it back"


def test_a_task_three_times_longer_than_its_visibility_timeout_runs_once(
    make_app: object, app_name: str
) -> None:
    runs = Counter[str]()
    apps: list[App] = [
        make_app(app_name, visibility_timeout=0.3)
        for _ in range(2)  # type: ignore[operator]
    ]
    started = threading.Event()
    for app in apps:

        @app.task(name="report")
        def report() -> str:
            runs["report"] += 1
            started.set()
            threading.Event().wait(0.9)  # the work itself: 3x the visibility timeout
            return "built"

    result = apps[0].tasks["report"].delay()
    first, second = (app.Worker(name=f"w{i}", reclaim_interval=0.05) for i, app in enumerate(apps))
    with running(first):
        assert started.wait(5)
        with running(second):
            assert result.get(timeout=5) == "built"
    assert runs == {"report": 1}


def test_pruning_removes_idle_consumers_that_hold_nothing(redis_app: App) -> None:
    redis_app.task(name="t")(lambda: None).delay()
    holder = Consumer(redis_app, "holder")
    assert len(holder.read()) == 1
    keys = redis_app.keys("default")
    for name in ("empty", "me"):
        redis_app.broker.client.xgroup_createconsumer(keys.stream, GROUP, name)

    def consumers() -> set[str]:
        infos = redis_app.broker.client.xinfo_consumers(keys.stream, GROUP)
        return {c["name"].decode() for c in infos}

    assert redis_app.broker.prune(keys, "me", idle_ms=3_600_000) == 0
    assert consumers() == {"holder", "empty", "me"}
    wait_until(
        lambda: all(
            c["idle"] > 20 for c in redis_app.broker.client.xinfo_consumers(keys.stream, GROUP)
        ),
        what="consumers idle over 20 ms",
    )
    assert redis_app.broker.prune(keys, "me", idle_ms=20) == 1
    assert consumers() == {"holder", "me"}, "the one holding an entry and the caller stay"


def test_an_entry_named_twice_in_one_settle_batch_is_settled_once(redis_app: App) -> None:
    task = redis_app.task(name="ship")(lambda: None)
    result = task.delay()
    consumer = Consumer(redis_app, "worker-a")
    [entry] = consumer.read()
    broker, keys = redis_app.broker, redis_app.keys("default")
    dead = SettleRecord(entry, "d", None, 0, "DEAD", b"", None, netstring(["error_type", "X"]))
    assert broker.settle(keys, "worker-a", [dead, dead]) == [True, False]
    assert len(redis_app.dead_letters()) == 1
    # Settled and deleted: a late success finds the entry gone and only records its result
    # (GONE); the repeat in the same batch is refused.
    assert broker.settle(keys, "worker-a", [success(redis_app, entry, result.id)] * 2) == [
        GONE,
        REFUSED,
    ]
    assert len(redis_app.dead_letters()) == 1
    assert stream_len(redis_app) == 0


@pytest.mark.parametrize("deliveries", [1, 2, 3, 4])
def test_reclaim_buries_exactly_the_entries_the_max_deliveries_rule_names(
    make_app: object, app_name: str, deliveries: int
) -> None:
    app: App = make_app(app_name, max_deliveries=3)  # type: ignore[operator]
    app.task(name="explodes")(lambda: None).delay()
    ghost = Consumer(app, "ghost")
    [entry] = ghost.read()
    stream = app.keys("default").stream
    app.broker.client.xclaim(stream, GROUP, "ghost", 0, [entry], idle=60_000, retrycount=deliveries)

    found = Consumer(app, "live").reclaim(max_deliveries=3)
    assert bool(found.dead) is delivered_too_often(deliveries, 3)
    assert bool(found.entries) is not delivered_too_often(deliveries, 3)
