"""`python -m examples.pipeline`: four orders through the pipeline and one order event fanned
out to three services, with one worker per queue (one consumer group per stage), then a report.

An order the pipeline rejects lands in the dead-letter stream of `order-received`, every queue
having its own: read it with `app.dead_letters("order-received")` or
`streamtasks dlq list -A examples.pipeline.tasks:app -Q order-received`. Each dead letter says why
(error), how many attempts were made (attempts) and where it came from (origin_stream).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any

from examples.pipeline.tasks import (
    INVENTORY,
    SERVICES,
    STAGES,
    Order,
    Step,
    app,
    publish_order_event,
    receive_order,
)
from streamtasks import AsyncResult, TaskError
from streamtasks.demo import fresh_embedded

# Four orders: a card payment, a bank transfer whose bank answers slowly at first, an order for a
# product out of stock, and one the pipeline rejects.
ORDERS: list[Order] = [
    {"order_id": "ORD-2024-001", "customer_id": 2001, "product_name": "Galaxy Book4",
     "quantity": 1, "unit_price": 1_800_000, "total_amount": 1_800_000,
     "customer_email": "kim@example.com", "shipping_address": "Gangnam-gu, Seoul",
     "payment_method": "credit_card", "card_number": "****-****-****-1234"},
    {"order_id": "ORD-2024-002", "customer_id": 2002, "product_name": "LG gram 17",
     "quantity": 2, "unit_price": 2_200_000, "total_amount": 4_400_000,
     "customer_email": "lee@example.com", "shipping_address": "Haeundae-gu, Busan",
     "payment_method": "bank_transfer", "bank_name": "KB Kookmin Bank"},
    {"order_id": "ORD-2024-003", "customer_id": 2003, "product_name": "MacBook Pro M3",
     "quantity": 1, "unit_price": 3_500_000, "total_amount": 3_500_000,
     "customer_email": "park@example.com", "shipping_address": "Jung-gu, Daegu",
     "payment_method": "credit_card", "card_number": "****-****-****-5678"},
    {"order_id": "ORD-2024-004", "customer_id": 2004, "product_name": "Problem item",
     "quantity": 1, "unit_price": 1_000_000, "total_amount": 1_000_000,
     "customer_email": "invalid-email", "shipping_address": "",
     "payment_method": "credit_card", "card_number": "****-****-****-0004"},
]  # fmt: skip
STOCK = {"Galaxy Book4": 15, "LG gram 17": 8, "MacBook Pro M3": 0, "Problem item": 5}
EVENT: Order = {
    "order_id": "ORD-2024-005", "customer_id": 2005, "product_name": "Test item 1",
    "quantity": 1, "total_amount": 100_000, "customer_email": "choi@example.com",
}  # fmt: skip
TIMEOUT = 20.0


class Teams:
    """One worker per queue, on threads of this process: one consumer group per stage."""

    def __init__(self, queues: tuple[str, ...]):
        self.workers = [
            app.Worker([queue], concurrency=2, name=f"{queue}-worker-1", block=0.2)
            for queue in queues
        ]
        self.threads = [threading.Thread(target=w.run, name=w.name) for w in self.workers]

    def __enter__(self) -> Teams:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop()
        for thread in self.threads:
            thread.join()


def follow(result: AsyncResult[Step]) -> list[Step]:
    """Wait for each stage in turn, from the first to where the order stopped."""
    trail: list[Step] = []
    while True:
        try:
            step = result.get(timeout=TIMEOUT)
        except TaskError as exc:
            # DEAD: dead-lettered (Reject, or retries used up); FAILURE: an error not retried.
            status = "dead-lettered" if exc.status == "DEAD" else "failed"
            trail.append({"stage": result.queue, "status": status, "error": exc.message})
            return trail
        trail.append(step)
        if "next" not in step:
            return trail
        result = app.AsyncResult(step["next"], step["next_queue"])


def run(url: str) -> dict[str, Any]:
    app.url = url
    began = time.monotonic()
    app.broker.client.hset(INVENTORY, mapping=STOCK)
    with Teams(STAGES + SERVICES):
        sent = {order["order_id"]: receive_order.delay(order) for order in ORDERS}
        trails = {order_id: follow(result) for order_id, result in sent.items()}
        fan_out = [result.get(timeout=TIMEOUT) for result in publish_order_event(EVENT)]
    ours = {result.id for result in sent.values()}
    failed = [d for d in app.dead_letters("order-received").list() if d.get("id") in ours]
    stock = app.broker.client.hgetall(INVENTORY)
    report = {
        "orders": {order_id: _summary(trail) for order_id, trail in trails.items()},
        "failed_orders": [
            {
                "order_id": d.as_dict()["call"]["args"][0]["order_id"],
                "reason": d.get("error"),
                "attempts": int(d.get("attempts")),
                "origin_stream": d.get("origin_stream"),
                "failed_at_ms": int(d.get("failed_at")),
            }
            for d in failed
        ],
        "fan_out": {step["service"]: step for step in fan_out},
        "stock": {k.decode(): int(v) for k, v in sorted(stock.items())},
        "seconds": round(time.monotonic() - began, 2),
    }
    app.close()
    return report


def _summary(trail: list[Step]) -> dict[str, Any]:
    last = trail[-1]
    paid = [s for s in trail if s["stage"] == "payment-processing"]
    details = ("courier", "tracking_number", "available_qty", "error")
    return {
        "stages": [step["stage"] for step in trail],
        "outcome": last["status"],
        **({"payment_attempts": paid[0]["attempts"]} if paid else {}),
        **{k: last[k] for k in details if k in last},
    }


def render(report: dict[str, Any]) -> str:
    lines = ["Order pipeline: " + " -> ".join(STAGES)]
    for order_id, order in report["orders"].items():
        detail = {k: v for k, v in order.items() if k not in ("stages", "outcome")}
        where = " -> ".join(order["stages"])
        lines.append(f"  {order_id}  {order['outcome']:<14} {where}")
        lines.append(f"  {'':12}  {'':<14} {', '.join(f'{k}={v}' for k, v in detail.items())}")
    lines.append("failed-orders (the dead-letter stream of order-received):")
    for f in report["failed_orders"]:
        lines.append(f"  {f['order_id']}  reason={f['reason']}  attempts={f['attempts']}  "
                     f"origin_stream={f['origin_stream']}")  # fmt: skip
    lines.append(f"fan-out of {EVENT['order_id']}, one queue per service:")
    for service, step in report["fan_out"].items():
        lines.append(f"  {service:<22} {step['did']}  (worker {step['by']})")
    lines.append(f"stock left: {report['stock']}   time taken: {report['seconds']:.1f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.pipeline", description=__doc__)
    parser.add_argument("--url", help="Redis URL (default: embedded:// in a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        report = run(args.url or stack.enter_context(fresh_embedded()))
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
