"""From `.delay()` to a settled entry on fakeredis: enqueue paths, idempotency keys, acks, delays,
retries and entries a worker cannot run. Work runs with `Worker.drain`; time moves by clock."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from typing import Any

import msgpack
import pytest

from streamtasks import App, ConfigurationError, EncodeError, Retry, TaskError, current_task
from streamtasks.broker import Claim
from streamtasks.message import Message, encode
from streamtasks.testing import ManualClock
from tests.unit.support import delayed_len, running, stream_len, wait_until


class GatewayTimeout(Exception):
    pass


def test_unencodable_arguments_raise_at_delay_and_enqueue_nothing(memory_app: App) -> None:
    task = memory_app.task(name="t")(lambda x=None, when=None: x)
    with pytest.raises(EncodeError, match=r"cannot encode args\[0\]: object of type object"):
        task.delay(object())
    with pytest.raises(TypeError):
        task.apply_async(([1, object()],), countdown=5)
    with pytest.raises(EncodeError, match=r"kwargs\['when'\]\[1\]"):
        task.apply_async((), {"when": (dt.datetime.now(), object())}, idempotency_key="k")
    assert (stream_len(memory_app), delayed_len(memory_app)) == (0, 0)
    assert not memory_app.broker.client.exists(memory_app.keys("default").idempotency("k"))


def test_a_message_over_max_message_bytes_is_refused_at_delay(
    make_memory_app: Any,
) -> None:
    app: App = make_memory_app(max_message_bytes=1024)
    task = app.task(name="t")(lambda blob: len(blob))
    with pytest.raises(EncodeError, match="over the limit of 1024"):
        task.delay("x" * 2048)
    assert stream_len(app) == 0
    small = task.delay("x" * 100)
    app.Worker().drain(timeout=5)
    assert small.get(timeout=1) == 100


def test_map_and_starmap_enqueue_one_task_per_item(memory_app: App) -> None:
    @memory_app.task(name="add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    mapped = add.map([1, 2, 3])
    starred = add.starmap([(1, 10), (2, 20)])
    assert stream_len(memory_app) == 5
    assert len({r.id for r in mapped + starred}) == 5
    memory_app.Worker().drain(timeout=5)
    assert [r.get(timeout=1) for r in mapped] == [1, 2, 3]
    assert [r.get(timeout=1) for r in starred] == [11, 22]


def test_map_with_one_bad_item_enqueues_none_of_them(memory_app: App) -> None:
    task = memory_app.task(name="t")(lambda x: x)
    with pytest.raises(EncodeError):
        task.map([1, 2, object()])
    assert stream_len(memory_app) == 0
    assert task.map([]) == []


def test_a_second_enqueue_with_the_same_key_returns_the_first_task(memory_app: App) -> None:
    calls: list[str] = []

    @memory_app.task(name="place_order")
    def place_order(order_id: str) -> str:
        calls.append(order_id)
        return f"placed {order_id}"

    first = place_order.apply_async(("o-1",), idempotency_key="order:o-1")
    second = place_order.apply_async(("o-1",), idempotency_key="order:o-1")
    other = place_order.apply_async(("o-2",), idempotency_key="order:o-2")
    assert second.id == first.id
    assert other.id != first.id
    assert stream_len(memory_app) == 2
    memory_app.Worker().drain(timeout=5)
    assert calls == ["o-1", "o-2"]
    assert second.get(timeout=1) == "placed o-1"
    third = place_order.apply_async(("o-1",), idempotency_key="order:o-1")
    assert third.id == first.id, "the key still names the first task after it ran"
    assert stream_len(memory_app) == 0


def test_a_task_level_key_function_derives_the_key_from_the_arguments(memory_app: App) -> None:
    calls: list[tuple[str, int]] = []

    @memory_app.task(name="charge", idempotency_key=lambda order_id, amount: f"charge:{order_id}")
    def charge(order_id: str, amount: int) -> None:
        calls.append((order_id, amount))
        assert current_task().idempotency_key == f"charge:{order_id}"

    a = charge.delay("o-1", 10)
    b = charge.delay(amount=10, order_id="o-1")
    c = charge.delay("o-2", 10)
    assert a.id == b.id != c.id
    memory_app.Worker().drain(timeout=5)
    assert calls == [("o-1", 10), ("o-2", 10)]
    c.get(timeout=1)


def test_an_explicit_key_wins_over_the_task_key_function(memory_app: App) -> None:
    task = memory_app.task(name="t", idempotency_key=lambda x: "fixed")(lambda x: x)
    assert task.delay(1).id == task.delay(1).id
    assert task.apply_async((1,), idempotency_key="other").id != task.delay(1).id


def test_a_keyed_delayed_task_is_enqueued_once(clock_app: App, clock: ManualClock) -> None:
    task = clock_app.task(name="t")(lambda: "ran")
    first = task.apply_async(countdown=30, idempotency_key="k")
    second = task.apply_async(countdown=30, idempotency_key="k")
    assert first.id == second.id
    assert delayed_len(clock_app) == 1


def redeliver(app: App, fields: dict[bytes, bytes], queue: str = "default") -> None:
    """Put an entry back in the stream with exactly these fields, as a redelivery would."""
    app.broker.client.xadd(app.keys(queue).stream, fields)


def last_run_fields(app: App, task_name: str, **call: Any) -> dict[bytes, bytes]:
    message = Message("fixed-id", task_name, call.get("args", ()), idempotency_key=call["key"])
    return {k.encode(): v.encode() if isinstance(v, str) else v for k, v in encode(message).items()}


def test_a_redelivered_entry_whose_key_is_done_is_acked_without_running(memory_app: App) -> None:
    runs = Counter[str]()

    @memory_app.task(name="ship")
    def ship(order_id: str) -> None:
        runs[order_id] += 1

    fields = last_run_fields(memory_app, "ship", args=("o-1",), key="ship:o-1")
    keys = memory_app.keys("default")
    memory_app.broker.enqueue(
        keys,
        "fixed-id",
        {k.decode(): v for k, v in fields.items()},
        claim=Claim("ship:o-1", "the call's fingerprint", 60_000),
    )
    worker = memory_app.Worker()
    worker.drain(timeout=5)
    assert runs == {"o-1": 1}
    assert memory_app.broker.client.hget(keys.idempotency("ship:o-1"), "done") == b"1"

    redeliver(memory_app, fields)
    worker.drain(timeout=5)
    assert runs == {"o-1": 1}, "a done key must not run again"
    assert stream_len(memory_app) == 0, "and the duplicate is acked and removed"
    assert memory_app.broker.backlog(keys)[1] == 0
    assert len(memory_app.dead_letters()) == 0


def test_a_keyed_run_redelivered_before_it_completed_runs_again(memory_app: App) -> None:
    runs: list[str] = []

    @memory_app.task(name="ship")
    def ship(order_id: str) -> None:
        runs.append(order_id)

    fields = last_run_fields(memory_app, "ship", args=("o-1",), key="ship:o-1")
    keys = memory_app.keys("default")
    memory_app.broker.enqueue(
        keys,
        "fixed-id",
        {k.decode(): v for k, v in fields.items()},
        claim=Claim("ship:o-1", "the call's fingerprint", 60_000),
    )
    redeliver(memory_app, fields)  # the same task twice in the stream, neither run yet
    memory_app.Worker().drain(timeout=5)
    assert runs == ["o-1", "o-1"], "a key that had not completed does not block a redelivery"
    assert memory_app.broker.client.hget(keys.idempotency("ship:o-1"), "done") == b"1"


def test_a_keyed_task_that_retries_marks_the_key_done_only_on_success(leaping_app: App) -> None:
    attempts: list[int] = []

    @leaping_app.task(name="ship", autoretry_for=(GatewayTimeout,))
    def ship() -> str:
        attempts.append(current_task().attempt)
        done = leaping_app.broker.client.hget(
            leaping_app.keys("default").idempotency("ship:o-1"), "done"
        )
        assert done is None
        if len(attempts) < 3:
            raise GatewayTimeout()
        return "shipped"

    result = ship.apply_async(idempotency_key="ship:o-1")
    leaping_app.Worker().drain(timeout=5)
    assert attempts == [1, 2, 3]
    assert result.get(timeout=1) == "shipped"


@pytest.mark.parametrize("acks_late", [True, False])
def test_acks_late_decides_whether_a_running_task_is_still_pending(
    memory_app: App, acks_late: bool
) -> None:
    """acks_late (the default) keeps the entry pending while it runs, so a crash redelivers it;
    acks_late=False acks it when it starts, so a crash loses it."""
    started, release = threading.Event(), threading.Event()

    @memory_app.task(name="slow", acks_late=acks_late)
    def slow() -> str:
        started.set()
        release.wait(5)
        return "done"

    result = slow.delay()
    keys = memory_app.keys("default")
    with running(memory_app.Worker()):
        assert started.wait(5)
        if acks_late:
            assert memory_app.broker.backlog(keys)[1] == 1
        else:
            wait_until(lambda: memory_app.broker.backlog(keys)[1] == 0, what="ack on receipt")
        release.set()
        assert result.get(timeout=5) == "done"
    assert memory_app.broker.backlog(keys) == (0, 0, 0)


def test_a_delayed_task_waits_for_the_clock_not_for_a_sleep(
    clock_app: App, clock: ManualClock
) -> None:
    ran = threading.Event()
    task = clock_app.task(name="later")(lambda: ran.set())
    result = task.apply_async(countdown=60)
    assert (stream_len(clock_app), delayed_len(clock_app)) == (0, 1)
    # A worker notices the injected clock jump within promote_interval.
    with running(clock_app.Worker(promote_interval=0.01)):
        assert not ran.wait(0.2), "ran before its due time"
        assert result.status == "PENDING"
        clock.advance(59.9)
        assert not ran.wait(0.1), "ran 100 ms before its due time"
        clock.advance(0.1)
        assert ran.wait(5)
    assert delayed_len(clock_app) == 0


def test_an_eta_is_honoured_like_a_countdown(clock_app: App, clock: ManualClock) -> None:
    task = clock_app.task(name="later")(lambda: "ran")
    eta = dt.datetime.fromtimestamp(clock.now + 3600, tz=dt.timezone.utc)
    result = task.apply_async(eta=eta)
    score = clock_app.broker.client.zrange(
        clock_app.keys("default").delayed, 0, -1, withscores=True
    )[0][1]
    assert score == (clock.now + 3600) * 1000
    clock.advance(3600)
    clock_app.Worker().drain(timeout=5)
    assert result.get(timeout=1) == "ran"


def test_drain_does_not_return_while_a_delayed_task_is_not_due(clock_app: App) -> None:
    from streamtasks import TimeoutError as DrainTimeout

    ran = threading.Event()
    clock_app.task(name="later")(lambda: ran.set()).apply_async(countdown=10)
    with pytest.raises(DrainTimeout):
        clock_app.Worker().drain(timeout=0.3)
    assert not ran.is_set()
    assert delayed_len(clock_app) == 1


def test_retries_run_again_and_then_succeed(leaping_app: App) -> None:
    attempts: list[int] = []

    @leaping_app.task(name="flaky", autoretry_for=(GatewayTimeout,), max_retries=3)
    def flaky(x: int) -> int:
        attempts.append(current_task().attempt)
        if len(attempts) < 3:
            raise GatewayTimeout("upstream slow")
        return x * 2

    result = flaky.delay(4)
    leaping_app.Worker().drain(timeout=5)
    assert attempts == [1, 2, 3]
    assert result.get(timeout=1) == 8
    assert len(leaping_app.dead_letters()) == 0


def test_exhausted_retries_land_in_the_dead_letter_stream(leaping_app: App) -> None:
    attempts: list[int] = []

    @leaping_app.task(name="flaky", autoretry_for=(GatewayTimeout,), max_retries=2)
    def flaky(order_id: str) -> None:
        attempts.append(current_task().attempt)
        raise GatewayTimeout(f"gateway timed out for {order_id}")

    result = flaky.delay("o-9")
    leaping_app.Worker(name="w1").drain(timeout=5)
    assert attempts == [1, 2, 3]
    assert result.status == "DEAD"
    with pytest.raises(TaskError) as info:
        result.get(timeout=1)
    assert info.value.type_name == "GatewayTimeout"
    [dead] = leaping_app.dead_letters().list()
    assert dead.task == "flaky"
    assert dead.get("error_type") == "GatewayTimeout"
    assert "gateway timed out for o-9" in dead.get("error")
    assert "Traceback" in dead.get("traceback")
    assert dead.get("attempts") == "3"
    assert dead.get("worker") == "w1"
    assert dead.get("origin_stream") == leaping_app.keys("default").stream
    assert dead.get("id") == result.id
    assert msgpack.unpackb(dead.fields[b"call"])["args"] == ["o-9"]


def test_an_unknown_exception_is_not_retried(leaping_app: App) -> None:
    attempts: list[int] = []

    @leaping_app.task(name="t", autoretry_for=(GatewayTimeout,))
    def t() -> None:
        attempts.append(1)
        raise KeyError("sku")

    result = t.delay()
    leaping_app.Worker().drain(timeout=5)
    assert attempts == [1]
    assert result.status == "FAILURE"
    assert len(leaping_app.dead_letters()) == 0


def test_retry_with_countdown_schedules_exactly_that_far_ahead(
    clock_app: App, clock: ManualClock
) -> None:
    attempts: list[int] = []

    @clock_app.task(name="poll", retry_backoff=1000.0)
    def poll() -> str:
        attempts.append(current_task().attempt)
        if len(attempts) == 1:
            raise Retry(countdown=7.5)
        return "ready"

    result = poll.delay()
    delayed_key = clock_app.keys("default").delayed
    with running(clock_app.Worker(promote_interval=0.01)):
        wait_until(lambda: delayed_len(clock_app) == 1, what="the retry to be scheduled")
        score = clock_app.broker.client.zrange(delayed_key, 0, -1, withscores=True)[0][1]
        assert score == (clock.now + 7.5) * 1000
        clock.advance(7.5)
        assert result.get(timeout=5) == "ready"
    assert attempts == [1, 2]


def test_entries_a_worker_cannot_run_are_dead_lettered_and_the_worker_carries_on(
    memory_app: App,
) -> None:
    ok = memory_app.task(name="ok")(lambda: "fine")
    stream = memory_app.keys("default").stream
    client = memory_app.broker.client
    client.xadd(stream, {"junk": b"\x00\x01\x02garbage"})
    client.xadd(stream, {"schema_version": "99", "id": "x", "task": "ok", "call": b""})
    stranger = ok.delay()  # a well-formed message, but for a task this worker does not know
    client.xadd(stream, dict(client.xrange(stream, "-", "+")[-1][1], task=b"no.such.task"))
    good = ok.delay()

    memory_app.Worker().drain(timeout=5)
    assert good.get(timeout=1) == "fine"
    assert stranger.get(timeout=1) == "fine"
    reasons = [(d.get("error_type"), d.get("error")) for d in memory_app.dead_letters().list()]
    assert len(reasons) == 3
    assert reasons[0][0] == "DecodeError" and "schema_version" in reasons[0][1]
    assert reasons[1][0] == "DecodeError" and "'99'" in reasons[1][1]
    assert reasons[2][0] == "UnknownTask" and "no.such.task" in reasons[2][1]
    assert memory_app.broker.backlog(memory_app.keys("default")) == (0, 0, 0)


def test_an_unregistered_task_gives_the_producer_a_dead_result(
    memory_app: App, make_memory_app: Any
) -> None:
    producer_only = memory_app.task(name="billing.invoice")(lambda: None)
    result = producer_only.delay()
    worker_app: App = make_memory_app()  # same name and server, no tasks registered
    worker_app.Worker(queues=["default"]).drain(timeout=5)
    assert result.status == "DEAD"
    with pytest.raises(TaskError) as info:
        result.get(timeout=1)
    assert info.value.type_name == "UnknownTask"


def test_a_worker_left_running_on_memory_serves_what_is_sent_after_it_started(
    memory_app: App,
) -> None:
    """Users' tests may keep a worker running in a thread and enqueue as they go: fakeredis wakes
    the worker's blocked reads at once, well inside a read's block or the fallback promotion."""
    ping = memory_app.task(name="ping")(lambda x: x)
    worker = memory_app.Worker(concurrency=2, block=2.0, promote_interval=4.0)
    with running(worker):
        wait_until(lambda: worker._session is not None and worker._session._reading, what="a read")
        assert ping.delay("now").get(timeout=1) == "now"
        assert [r.get(timeout=1) for r in ping.map(["a", "b", "c"])] == ["a", "b", "c"]
        assert ping.apply_async(("later",), countdown=0.05).get(timeout=1) == "later"


def test_one_worker_serves_every_queue_with_a_task(memory_app: App) -> None:
    orders = memory_app.task(name="orders.place", queue="orders")(lambda: "order")
    payments = memory_app.task(name="payments.charge", queue="payments")(lambda: "payment")
    both = [orders.delay(), payments.delay(), orders.apply_async(queue="payments")]
    worker = memory_app.Worker()
    assert worker.queues == ["orders", "payments"]
    worker.drain(timeout=5)
    assert [r.get(timeout=1) for r in both] == ["order", "payment", "order"]


def test_map_honours_the_tasks_idempotency_key(memory_app: App) -> None:
    runs: list[str] = []

    @memory_app.task(name="charge", idempotency_key=lambda order_id: f"charge:{order_id}")
    def charge(order_id: str) -> str:
        runs.append(order_id)
        return order_id

    first = charge.delay("o-1")
    mapped = charge.map(["o-1", "o-1", "o-2"])
    assert [r.id for r in mapped[:2]] == [first.id, first.id]
    assert mapped[2].id != first.id
    memory_app.Worker().drain(timeout=5)
    assert sorted(runs) == ["o-1", "o-2"]
    assert [r.get(timeout=1) for r in mapped] == ["o-1", "o-1", "o-2"]


def test_an_idempotency_key_that_is_not_a_string_is_refused_and_nothing_is_sent(
    memory_app: App,
) -> None:
    task = memory_app.task(name="t", idempotency_key=lambda x: x)(lambda x: x)
    with pytest.raises(ConfigurationError, match="idempotency key"):
        task.delay(["not", "a", "str"])
    with pytest.raises(ConfigurationError, match="idempotency key"):
        task.map([7])
    assert memory_app.broker.client.xlen(memory_app.keys("default").stream) == 0


def test_a_task_that_exits_or_retries_nonsense_fails_alone_and_the_worker_carries_on(
    memory_app: App,
) -> None:
    import sys

    @memory_app.task(name="quits")
    def quits() -> None:
        sys.exit(3)

    @memory_app.task(name="forever")
    def forever() -> None:
        raise Retry(countdown=float("inf"))

    @memory_app.task(name="fine")
    def fine() -> str:
        return "ok"

    results = [quits.delay(), forever.delay(), fine.delay()]
    memory_app.Worker().drain(timeout=5)
    with pytest.raises(TaskError) as exited:
        results[0].get(timeout=1)
    assert exited.value.type_name == "SystemExit"
    with pytest.raises(TaskError) as nonsense:
        results[1].get(timeout=1)
    assert nonsense.value.type_name == "ValueError"
    assert "finite" in nonsense.value.message
    assert results[2].get(timeout=1) == "ok"


def test_stopping_does_not_hand_back_a_finished_task_whose_outcome_waits_to_be_settled(
    memory_app: App,
) -> None:
    """Only runs still going at the shutdown deadline are handed back. A run that finished while
    the settler was busy with an earlier one must not be, or another worker would run it again."""
    broker = memory_app.broker
    first_settle, let_settle, second_ran = threading.Event(), threading.Event(), threading.Event()
    handed_back: list[str] = []
    real_settle, real_lease = broker.settle, broker.lease

    def slow_settle(*args: Any, **kwargs: Any) -> Any:
        first_settle.set()
        let_settle.wait(10)
        return real_settle(*args, **kwargs)

    def spying_lease(keys: Any, consumer: str, ids: Any, *, hand_back: bool) -> Any:
        if hand_back:
            handed_back.extend(ids)
        return real_lease(keys, consumer, ids, hand_back=hand_back)

    def second_task() -> str:
        first_settle.wait(10)  # finish only once the settler is busy with the first outcome
        second_ran.set()
        return "two"

    broker.settle = slow_settle  # type: ignore[method-assign]
    broker.lease = spying_lease  # type: ignore[method-assign]
    first = memory_app.task(name="first")(lambda: "one").delay()
    second = memory_app.task(name="second")(second_task).delay()
    worker = memory_app.Worker(concurrency=2, shutdown_timeout=5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert second_ran.wait(10)
    worker.stop()
    let_settle.set()
    thread.join(10)
    assert handed_back == []
    assert [first.get(timeout=1), second.get(timeout=1)] == ["one", "two"]
