"""`python -m examples.pipeline`: where each of the four orders ends up, on a real Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.redis_server import RedisServer

STAGES = [
    "order-received",
    "inventory-check",
    "payment-processing",
    "payment-result",
    "shipping-dispatch",
]


def test_each_order_ends_where_its_story_says(
    redis_server: RedisServer, run_example: Callable[..., dict[str, Any]]
) -> None:
    r = run_example("pipeline", redis_server.url)
    orders = r["orders"]

    shipped = orders["ORD-2024-001"]
    assert (shipped["stages"], shipped["outcome"]) == (STAGES, "dispatched")
    assert shipped["payment_attempts"] == 1
    assert shipped["courier"] and shipped["tracking_number"]
    # The bank transfer timed out once and went through on the retry.
    transfer = orders["ORD-2024-002"]
    assert (transfer["stages"], transfer["outcome"]) == (STAGES, "dispatched")
    assert transfer["payment_attempts"] == 2
    # Out of stock: stops at inventory, never charged.
    assert orders["ORD-2024-003"] == {
        "stages": ["order-received", "inventory-check"],
        "outcome": "out_of_stock",
        "available_qty": 0,
    }
    # Invalid e-mail: refused at intake, into failed-orders.
    assert orders["ORD-2024-004"]["stages"] == ["order-received"]
    assert orders["ORD-2024-004"]["outcome"] == "dead-lettered"
    [failed] = r["failed_orders"]
    assert failed["order_id"] == "ORD-2024-004"
    assert failed["reason"] == "invalid_email_format"
    assert failed["attempts"] == 1
    assert "{order-received}" in failed["origin_stream"]
    # Only the two orders that reached payment took stock.
    assert r["stock"] == {
        "Galaxy Book4": 14,
        "LG gram 17": 6,
        "MacBook Pro M3": 0,
        "Problem item": 5,
    }


def test_one_order_event_reaches_each_service_once(
    redis_server: RedisServer, run_example: Callable[..., dict[str, Any]]
) -> None:
    r = run_example("pipeline", redis_server.url)

    services = ["payment-service", "shipping-service", "notification-service"]
    assert sorted(r["fan_out"]) == sorted(services)
    for service in services:
        handled = r["fan_out"][service]
        assert handled["order_id"] == "ORD-2024-005"
        assert handled["by"] == f"{service}-worker-1"  # that service's own worker
