"""An order pipeline as tasks, one queue per stage, each stage sending the order on with
`.delay()`; and a fan-out, one order event to three services.

    order-received -> inventory-check -> payment-processing -> payment-result -> shipping-dispatch

Every step returns a record of what it did (what a hand-written pipeline would XADD), plus where
the order went
next ("next", "next_queue"), so a producer can follow an order to the end with AsyncResult.get.
Run the workers yourself with `streamtasks worker -A examples.pipeline.tasks:app`.
"""

from __future__ import annotations

import re
from typing import Any

from streamtasks import App, AsyncResult, Reject, Task, current_task

app = App("pipeline")

Order = dict[str, Any]
Step = dict[str, Any]

STAGES = (
    "order-received",
    "inventory-check",
    "payment-processing",
    "payment-result",
    "shipping-dispatch",
)
SERVICES = ("payment-service", "shipping-service", "notification-service")
INVENTORY = f"{app.name}:inventory"  # product -> units in stock; this example's own key
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

# Take `qty` units if that many are left, in one atomic step; returns the units there were.
RESERVE_LUA = """
local available = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if available >= tonumber(ARGV[2]) then
  redis.call('HINCRBY', KEYS[1], ARGV[1], -tonumber(ARGV[2]))
end
return available
"""


class BankTimeout(Exception):
    """The bank did not answer in time; worth another try."""


def _then(task: Task[..., Step], *args: Any) -> Step:
    """Send the order to the next stage; the returned fields say where it went."""
    result = task.delay(*args)
    return {"next": result.id, "next_queue": result.queue}


@app.task(name="pipeline.receive_order", queue="order-received")
def receive_order(order: Order) -> Step:
    """Stage 1: take the order in, or refuse it for good when it cannot be fulfilled as written."""
    if not EMAIL.fullmatch(order["customer_email"]):
        # No retry can fix a malformed address: dead-letter it now, with the reason.
        raise Reject("invalid_email_format")
    return {"stage": "order-received", "status": "received", **_then(check_inventory, order)}


@app.task(name="pipeline.check_inventory", queue="inventory-check")
def check_inventory(order: Order) -> Step:
    """Stage 2: reserve the units; an order for more than is left stops here."""
    client = app.broker.client
    reserve = client.register_script(RESERVE_LUA)
    available = int(reserve(keys=[INVENTORY], args=[order["product_name"], order["quantity"]]))
    step = {
        "stage": "inventory-check",
        "requested_qty": order["quantity"],
        "available_qty": available,
    }
    if available < order["quantity"]:
        return {**step, "status": "out_of_stock"}
    return {**step, "status": "available", **_then(process_payment, order)}


@app.task(
    name="pipeline.process_payment",
    queue="payment-processing",
    autoretry_for=(BankTimeout,),
    max_retries=3,
    retry_backoff=0.2,
)
def process_payment(order: Order) -> Step:
    """Stage 3: charge the card or take the transfer; a bank timeout is retried with backoff."""
    attempt = current_task().attempt
    if order["payment_method"] == "bank_transfer" and attempt == 1:
        raise BankTimeout(f"{order['bank_name']} did not answer")  # its first answer is slow
    transaction = f"TXN-{order['order_id'][-3:]}-2024"
    return {
        "stage": "payment-processing",
        "status": "processing",
        "payment_method": order["payment_method"],
        "attempts": attempt,
        **_then(record_payment, order, transaction),
    }


@app.task(name="pipeline.record_payment", queue="payment-result")
def record_payment(order: Order, transaction_id: str) -> Step:
    """Stage 4: the payment completed; record the transaction and its 1% fee."""
    return {
        "stage": "payment-result",
        "status": "completed",
        "transaction_id": transaction_id,
        "amount": order["total_amount"],
        "fee": order["total_amount"] // 100,
        **_then(dispatch_shipping, order),
    }


@app.task(name="pipeline.dispatch_shipping", queue="shipping-dispatch")
def dispatch_shipping(order: Order) -> Step:
    """Stage 5: hand the parcel to a courier."""
    number = int(order["order_id"][-3:])
    return {
        "stage": "shipping-dispatch",
        "status": "dispatched",
        "courier": ("CJ Logistics", "Hanjin Express")[(number - 1) % 2],
        "tracking_number": f"{order['customer_id']}{number:08d}",
    }


# The fan-out: one order event read by a payment, a shipping and a notification service, each
# through its own consumer group. A streamtasks queue has one group, shared by the workers of one
# service, so the event goes once to each service's queue.
def publish_order_event(event: Order) -> list[AsyncResult[Step]]:
    return [task.delay(event) for task in (charge_customer, book_courier, notify_customer)]


def _handled(event: Order, did: str) -> Step:
    task = current_task()
    return {"service": task.queue, "order_id": event["order_id"], "did": did, "by": task.worker}


@app.task(name="pipeline.charge_customer", queue="payment-service")
def charge_customer(event: Order) -> Step:
    return _handled(event, f"charged {event['total_amount']} to customer {event['customer_id']}")


@app.task(name="pipeline.book_courier", queue="shipping-service")
def book_courier(event: Order) -> Step:
    return _handled(event, f"booked a pickup for {event['quantity']} parcel(s)")


@app.task(name="pipeline.notify_customer", queue="notification-service")
def notify_customer(event: Order) -> Step:
    return _handled(event, f"e-mailed {event['customer_email']}")
