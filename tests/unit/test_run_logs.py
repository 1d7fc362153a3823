"""What a worker logs about each run: nothing at all may go wrong silently."""

from __future__ import annotations

import logging

import pytest

from streamtasks import App, Reject
from streamtasks.message import Message, encode


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.ERROR]


def test_a_failure_is_one_error_with_task_id_attempt_and_the_exception(
    memory_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @memory_app.task(name="shop.charge")
    def charge(order_id: str) -> None:
        raise ValueError(f"card expired for {order_id}")

    result = charge.delay("o-1")
    with caplog.at_level(logging.WARNING, logger="streamtasks"):
        memory_app.Worker().drain(timeout=5)

    [record] = errors(caplog)
    assert record.getMessage().startswith(f"shop.charge[{result.id}] failed on attempt 1 after ")
    assert record.getMessage().endswith("ValueError: card expired for o-1")
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert (record.task_id, record.attempt, record.outcome) == (result.id, 1, "FAILURE")  # type: ignore[attr-defined]


def test_a_rejected_task_is_one_error_saying_it_was_dead_lettered(
    memory_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @memory_app.task(name="shop.refund")
    def refund() -> None:
        raise Reject("refund window closed")

    refund.delay()
    with caplog.at_level(logging.WARNING, logger="streamtasks"):
        memory_app.Worker().drain(timeout=5)

    [record] = errors(caplog)
    assert "dead-lettered on attempt 1" in record.getMessage()
    assert record.getMessage().endswith("Reject: refund window closed")


def test_an_unknown_task_is_dead_lettered_with_the_names_the_worker_knows(
    memory_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    memory_app.task(name="shop.place_order")(lambda: None)
    memory_app.task(name="shop.charge")(lambda: None)
    fields = encode(Message("t-1", "shop.place_ordr"))
    memory_app.broker.client.xadd(memory_app.keys("default").stream, fields)

    with caplog.at_level(logging.WARNING, logger="streamtasks"):
        memory_app.Worker().drain(timeout=5)

    [record] = errors(caplog)
    assert "shop.place_ordr[t-1] dead-lettered" in record.getMessage()
    assert "it knows shop.charge, shop.place_order" in record.getMessage()
    [dead] = memory_app.dead_letters().list()
    assert dead.get("error_type") == "UnknownTask"
    assert "it knows shop.charge, shop.place_order" in dead.get("error")


def test_a_success_logs_nothing_above_info(
    memory_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    memory_app.task(name="shop.ping")(lambda: "pong").delay()
    with caplog.at_level(logging.INFO, logger="streamtasks"):
        memory_app.Worker().drain(timeout=5)
    ran = [r for r in caplog.records if r.name == "streamtasks.runs"]
    assert [(r.levelno, r.outcome) for r in ran] == [(logging.INFO, "SUCCESS")]  # type: ignore[attr-defined]
