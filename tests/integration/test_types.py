"""Ordinary Python values travel to a worker and back exactly, on a real Redis: the types, values
and time zones a task is called with are the ones it sees, and its result comes back the same."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from streamtasks import App, EncodeError, TaskError


@dataclass(frozen=True)
class Money:
    cents: int
    currency: str


VALUES: list[Any] = [
    dt.datetime(2026, 11, 27, 9, 30, tzinfo=ZoneInfo("Europe/Berlin")),
    dt.datetime(2026, 11, 27, 8, 30, 0, 123456, tzinfo=dt.timezone.utc),
    dt.datetime(2026, 11, 27, 9, 30),
    dt.date(2026, 11, 27),
    dt.time(9, 30, 15, 250),
    dt.timedelta(days=-1, seconds=5, microseconds=7),
    Decimal("129.990000000000000000000000000000000000001"),
    uuid.UUID("7f3c2a1e-0000-4000-8000-00000000abcd"),
    {"gift-wrap", "express"},
    frozenset({1, 2}),
    ("o-1", ("sku-9", 2)),
    b"\x00\xffraw",
    {("sku", 1): [Decimal("1.5"), None]},
]


def test_each_value_reaches_the_task_as_itself_and_comes_back_as_itself(redis_app: App) -> None:
    seen: list[Any] = []

    @redis_app.task(name="echo")
    def echo(value: Any) -> Any:
        seen.append(value)
        return value

    results = [echo.delay(v) for v in VALUES]
    redis_app.Worker().drain(timeout=10)

    for sent, got, result in zip(VALUES, seen, results, strict=True):
        back = result.get(timeout=1)
        for value in (got, back):
            assert value == sent and type(value) is type(sent)
            if isinstance(sent, dt.datetime | dt.time):
                assert value.tzinfo == sent.tzinfo
    assert seen[0].tzinfo is ZoneInfo("Europe/Berlin")


def test_a_registered_type_travels_both_ways(make_app: Any, app_name: str) -> None:
    producer: App = make_app(app_name)
    worker_side: App = make_app(app_name)
    for app in (producer, worker_side):
        app.register_type(Money, lambda m: [m.cents, m.currency], lambda v: Money(*v))

        @app.task(name="refund")
        def refund(amount: Money) -> Money:
            return Money(amount.cents // 2, amount.currency)

    result = producer.tasks["refund"].delay(Money(1000, "EUR"))
    worker_side.Worker().drain(timeout=10)
    assert result.get(timeout=1) == Money(500, "EUR")


def test_a_worker_without_the_registration_dead_letters_the_call_saying_why(
    make_app: Any, app_name: str
) -> None:
    producer: App = make_app(app_name)
    producer.register_type(Money, lambda m: [m.cents, m.currency], lambda v: Money(*v))
    producer.task(name="refund")(lambda amount: amount)
    worker_side: App = make_app(app_name)
    worker_side.task(name="refund")(lambda amount: amount)

    result = producer.tasks["refund"].delay(Money(1000, "EUR"))
    worker_side.Worker().drain(timeout=10)
    with pytest.raises(TaskError) as dead:
        result.get(timeout=1)
    assert dead.value.status == "DEAD" and dead.value.type_name == "DecodeError"
    assert "Money" in dead.value.message and "register_type" in dead.value.message


def test_an_unencodable_argument_names_its_path_and_nothing_is_enqueued(redis_app: App) -> None:
    class Widget:
        pass

    place = redis_app.task(name="place")(lambda order: order)
    with pytest.raises(EncodeError, match=r"kwargs\['order'\]\['lines'\]\[1\].*Widget"):
        place.delay(order={"lines": [1, Widget()]})
    assert redis_app.broker.client.xlen(redis_app.keys("default").stream) == 0


def test_a_result_that_cannot_be_encoded_fails_the_task_saying_where(redis_app: App) -> None:
    redis_app.task(name="leaky")(lambda: {"conn": object()})
    result = redis_app.tasks["leaky"].delay()
    redis_app.Worker().drain(timeout=10)
    with pytest.raises(TaskError) as failed:
        result.get(timeout=1)
    assert failed.value.type_name == "EncodeError"
    assert "the result['conn']" in failed.value.message
