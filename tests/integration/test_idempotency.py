"""Idempotency keys as payment APIs have them, on a real Redis: one key stands for one call; the
same call gets the first task's result, another call is refused; a key whose task failed is free
again unless the task keeps it; an app can free a key early."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from streamtasks import App, AsyncResult, IdempotencyConflict, Reject, TaskError
from tests.integration.conftest import Consumer
from tests.unit.support import stream_len


def test_the_same_key_with_the_same_call_returns_the_first_tasks_result(redis_app: App) -> None:
    charged: list[tuple[str, int]] = []

    @redis_app.task(name="charge")
    def charge(order_id: str, cents: int = 100) -> str:
        charged.append((order_id, cents))
        return f"ch_{order_id}"

    first = charge.apply_async(("o-1", 100), idempotency_key="pay:o-1")
    same = [
        charge.apply_async(("o-1", 100), idempotency_key="pay:o-1"),
        charge.apply_async((), {"cents": 100, "order_id": "o-1"}, idempotency_key="pay:o-1"),
        charge.apply_async(("o-1",), idempotency_key="pay:o-1"),  # 100 is the default
    ]
    redis_app.Worker().drain(timeout=10)

    assert {r.id for r in same} == {first.id}
    assert [r.get(timeout=1) for r in same] == ["ch_o-1"] * 3
    assert charged == [("o-1", 100)]


def test_the_same_key_with_other_arguments_is_refused_naming_the_key_and_first_task(
    redis_app: App,
) -> None:
    charge = redis_app.task(name="charge")(lambda order_id, cents: cents)
    first = charge.apply_async(("o-1", 100), idempotency_key="pay:o-1")

    with pytest.raises(IdempotencyConflict) as refused:
        charge.apply_async(("o-1", 999), idempotency_key="pay:o-1")

    assert (refused.value.key, refused.value.task_id) == ("pay:o-1", first.id)
    assert "'pay:o-1'" in str(refused.value) and first.id in str(refused.value)
    assert stream_len(redis_app) == 1, "nothing more was enqueued"


def test_the_same_key_for_another_task_is_refused(redis_app: App) -> None:
    charge = redis_app.task(name="charge")(lambda order_id: None)
    refund = redis_app.task(name="refund")(lambda order_id: None)
    first = charge.apply_async(("o-1",), idempotency_key="o-1")
    with pytest.raises(IdempotencyConflict) as refused:
        refund.apply_async(("o-1",), idempotency_key="o-1")
    assert refused.value.task_id == first.id


def test_a_task_level_key_refuses_a_different_amount_for_the_same_order(redis_app: App) -> None:
    @redis_app.task(name="charge", idempotency_key=lambda order_id, cents: f"charge:{order_id}")
    def charge(order_id: str, cents: int) -> int:
        return cents

    charge.delay("o-1", 100)
    with pytest.raises(IdempotencyConflict):
        charge.delay("o-1", 999)
    with pytest.raises(IdempotencyConflict):
        charge.starmap([("o-2", 5), ("o-1", 5)])
    assert stream_len(redis_app) == 2, "o-1 once, and o-2: a batch sends its other calls"
    assert charge.starmap([("o-2", 5), ("o-1", 100)])[0].id == charge.delay("o-2", 5).id


@pytest.mark.parametrize("ending", ["FAILURE", "DEAD"])
def test_a_key_whose_task_failed_for_good_runs_a_new_task(redis_app: App, ending: str) -> None:
    outcomes = [ValueError("card network down") if ending == "FAILURE" else Reject("declined")]

    @redis_app.task(name="charge")
    def charge(order_id: str) -> str:
        if outcomes:
            raise outcomes.pop()
        return "charged"

    failed = charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    redis_app.Worker().drain(timeout=10)
    with pytest.raises(TaskError) as error:
        failed.get(timeout=1)
    assert error.value.status == ending

    again = charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    redis_app.Worker().drain(timeout=10)
    assert again.id != failed.id
    assert again.get(timeout=1) == "charged"
    assert charge.apply_async(("o-1",), idempotency_key="pay:o-1").id == again.id


def test_a_task_can_keep_a_failed_key_for_its_whole_ttl(redis_app: App) -> None:
    @redis_app.task(name="charge", release_key_on_failure=False)
    def charge(order_id: str) -> str:
        raise ValueError("card network down")

    failed = charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    redis_app.Worker().drain(timeout=10)
    again = charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    assert again.id == failed.id
    with pytest.raises(TaskError, match="card network down"):
        again.get(timeout=1)


def test_a_key_whose_entry_died_max_deliveries_times_is_free_again(
    make_app: Callable[..., App], app_name: str
) -> None:
    app = make_app(app_name, max_deliveries=1)
    charge = app.task(name="charge")(lambda order_id: "charged")
    poison = charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    ghost = Consumer(app, "ghost")
    [entry] = ghost.read()
    ghost.age(entry, 60_000)
    assert len(Consumer(app, "live").reclaim(max_deliveries=1).dead) == 1

    again = charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    assert again.id != poison.id
    app.Worker().drain(timeout=10)
    assert again.get(timeout=1) == "charged"


def test_an_app_can_release_a_key_early(redis_app: App) -> None:
    runs: list[str] = []
    charge = redis_app.task(name="charge", queue="payments")(lambda order_id: runs.append(order_id))
    first = charge.apply_async(("o-1",), idempotency_key="pay:o-1")

    assert charge.release_key("pay:o-1") is True
    assert redis_app.release_key("pay:o-1", queue="payments") is False, "already free"
    second = charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    assert second.id != first.id
    redis_app.Worker().drain(timeout=10)
    assert runs == ["o-1", "o-1"]

    # The released task's success did not take the key back from the one that holds it now.
    assert charge.apply_async(("o-1",), idempotency_key="pay:o-1").id == second.id


def test_a_hundred_producers_racing_two_calls_for_one_key_get_one_task_and_conflicts(
    make_app: Callable[..., App], app_name: str
) -> None:
    producers = [make_app(app_name) for _ in range(4)]
    for app in producers:
        app.task(name="charge")(lambda order_id, cents: cents)
    start = threading.Barrier(100)

    def produce(n: int) -> AsyncResult[object] | IdempotencyConflict:
        task = producers[n % 4].tasks["charge"]
        start.wait()
        try:
            return task.apply_async(("o-1", 100 if n % 2 else 999), idempotency_key="pay:o-1")
        except IdempotencyConflict as conflict:
            return conflict

    with ThreadPoolExecutor(100) as pool:
        outcomes = list(pool.map(produce, range(100)))
    accepted = [o for o in outcomes if isinstance(o, AsyncResult)]
    refused = [o for o in outcomes if isinstance(o, IdempotencyConflict)]
    assert len(accepted) == len(refused) == 50, "one of the two calls won the key, all of it"
    assert len({r.id for r in accepted} | {c.task_id for c in refused}) == 1
    assert stream_len(producers[0]) == 1


def test_a_call_the_worker_cannot_decode_frees_its_key(
    make_app: Callable[..., App], app_name: str
) -> None:
    class Order:
        pass

    producer, worker_side = make_app(app_name), make_app(app_name)
    producer.register_type(Order, lambda o: [], lambda v: Order())
    for app in (producer, worker_side):
        app.task(name="ship")(lambda order: "shipped")
    failed = producer.tasks["ship"].apply_async((Order(),), idempotency_key="ship:o-1")
    worker_side.Worker().drain(timeout=10)
    assert failed.status == "DEAD"

    again = worker_side.tasks["ship"].apply_async(("o-1",), idempotency_key="ship:o-1")
    assert again.id != failed.id


def test_a_replayed_dead_letter_takes_its_key_back(redis_app: App) -> None:
    declines = [Reject("card declined")]
    charged: list[str] = []

    @redis_app.task(name="charge")
    def charge(order_id: str) -> str:
        if declines:
            raise declines.pop()
        charged.append(order_id)
        return "charged"

    first = charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    redis_app.Worker().drain(timeout=10)
    assert first.status == "DEAD"

    assert redis_app.dead_letters().replay() != []
    redis_app.Worker().drain(timeout=10)
    assert first.get(timeout=1) == "charged"
    again = charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    assert again.id == first.id, "the replayed task holds the key again"
    redis_app.Worker().drain(timeout=10)
    assert charged == ["o-1"], "charged once"


def test_a_dead_letter_whose_key_another_task_took_is_not_replayed(redis_app: App) -> None:
    outcomes = [Reject("card declined")]

    @redis_app.task(name="charge")
    def charge(order_id: str) -> str:
        if outcomes:
            raise outcomes.pop()
        return "charged"

    charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    redis_app.Worker().drain(timeout=10)
    second = charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    redis_app.Worker().drain(timeout=10)
    assert second.get(timeout=1) == "charged"

    assert redis_app.dead_letters().replay() == []
    assert len(redis_app.dead_letters()) == 1, "left where it was"


def test_a_key_whose_task_was_revoked_runs_a_new_task(redis_app: App) -> None:
    charge = redis_app.task(name="charge")(lambda order_id: "charged")
    revoked = charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    revoked.revoke()
    redis_app.Worker().drain(timeout=10)
    assert revoked.status == "REVOKED"

    again = charge.apply_async(("o-1",), idempotency_key="pay:o-1")
    assert again.id != revoked.id
    redis_app.Worker().drain(timeout=10)
    assert again.get(timeout=1) == "charged"
