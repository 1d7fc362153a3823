"""The Black Friday shop, the code a user writes: its App, two tasks, the stock and gateway Lua
scripts, a stand-in payment gateway and the shop's Redis keys.

Worker processes load it as `streamtasks.demo:app` (the package re-exports `app`), which imports
this module and so registers both tasks.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from streamtasks.app import App
from streamtasks.context import current_task
from streamtasks.errors import Reject

# A short visibility timeout, so the orders of a killed worker come back within the demo.
app = App("blackfriday", visibility_timeout=2.0)

PRICE = 129_000
GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"  # the test card number gateways decline


class GatewayTimeout(Exception):
    """The gateway did not answer in time: the charge may or may not have gone through."""


class CardDeclined(Exception):
    """The gateway refused the card for good."""


# Take one unit for an order, at most once per order: a re-run after a crash gets the first answer
# back instead of a second unit, and the stock never goes below zero.
RESERVE_LUA = """
local answer = redis.call('HGET', KEYS[2], ARGV[1])
if answer then return answer end
answer = 'sold_out'
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
  redis.call('DECR', KEYS[1])
  answer = 'reserved'
end
redis.call('HSET', KEYS[2], ARGV[1], answer)
return answer
"""

# The gateway's side: money moves once per idempotency key, as with real gateways. `captures`
# counts the times money moved for each order, which is how the report measures "charged twice".
CAPTURE_LUA = """
local charge = redis.call('HGET', KEYS[1], ARGV[1])
if charge then return charge end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return ARGV[3]
"""


class SaleKeys:
    """The shop's own keys for one sale: in the app's namespace, under one hash tag."""

    def __init__(self, sale: str):
        self.sale = sale
        base = f"{app.name}:{{sale-{sale}}}"
        self.stock = f"{base}:stock"
        self.orders = f"{base}:orders"  # order id -> reserved | sold_out
        self.paid = f"{base}:paid"
        self.declined = f"{base}:declined"
        self.retries = f"{base}:retries"
        self.recovered = f"{base}:recovered"
        self.running = f"{base}:running"  # task id -> the worker running it
        self.gateway_calls = f"{base}:gateway:calls"
        self.gateway_charges = f"{base}:gateway:charges"  # idempotency key -> charge id
        self.gateway_captures = f"{base}:gateway:captures"  # order id -> times money moved

    def all(self) -> list[str]:
        return [value for name, value in vars(self).items() if name != "sale"]


def redis_client() -> Any:
    """The app's Redis client for the shop's own keys (untyped: redis-py's replies are loose)."""
    return app.broker.client


def _lua(source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    client = redis_client()
    return client.register_script(source)(keys=list(keys), args=list(args), client=client)


def gateway_charge(
    keys: SaleKeys, order_id: str, card: str, amount: int, idempotency_key: str
) -> str:
    """A stand-in payment gateway: 50-150 ms a call; about 30% of calls time out, half of them
    after the money moved (what makes retrying a payment dangerous); DECLINED_CARD is refused."""
    call = int(redis_client().hincrby(keys.gateway_calls, order_id, 1))
    rng = random.Random(f"{keys.sale}:{order_id}:{call}")
    time.sleep(rng.uniform(0.05, 0.15))  # the network round trip to the gateway
    roll = rng.random()
    if roll < 0.15:
        raise GatewayTimeout("no answer from the gateway (the request was lost)")
    if card == DECLINED_CARD:
        raise CardDeclined("insufficient funds")
    charge: bytes = _lua(
        CAPTURE_LUA,
        [keys.gateway_charges, keys.gateway_captures],
        [idempotency_key, order_id, f"ch_{uuid.uuid4().hex[:12]}"],
    )
    if roll < 0.30:
        raise GatewayTimeout("no answer from the gateway (it charged; the reply was lost)")
    return charge.decode()


@app.task(
    name="blackfriday.place_order",
    queue="orders",
    idempotency_key=lambda sale, buyer, product, card: f"{sale}:{buyer}:{product}",
)
def place_order(sale: str, buyer: str, product: str, card: str) -> dict[str, str]:
    """Take one unit of stock; if there was one, send the payment on."""
    keys = SaleKeys(sale)
    order_id = f"{product}-{buyer}"
    with _tracked(keys):
        if _lua(RESERVE_LUA, [keys.stock, keys.orders], [order_id]) != b"reserved":
            return {"order": order_id, "status": "sold_out"}
        payment = charge_payment.delay(sale, order_id, card, PRICE)
        return {"order": order_id, "status": "reserved", "payment": payment.id}


@app.task(
    name="blackfriday.charge_payment",
    queue="payments",
    autoretry_for=(GatewayTimeout,),
    max_retries=10,
    retry_backoff=0.05,
    retry_backoff_max=1.0,
    idempotency_key=lambda sale, order_id, card, amount: f"pay:{sale}:{order_id}",
)
def charge_payment(sale: str, order_id: str, card: str, amount: int) -> dict[str, str]:
    """Charge the card under the task's idempotency key, so a retry or a re-run after a crash
    never charges twice; a timeout is retried with backoff, a declined card dead-lettered."""
    keys = SaleKeys(sale)
    key = current_task().idempotency_key
    assert key is not None
    with _tracked(keys):
        try:
            charge = gateway_charge(keys, order_id, card, amount, idempotency_key=key)
        except CardDeclined as exc:
            redis_client().sadd(keys.declined, order_id)
            raise Reject(f"card declined: {exc}") from exc
        redis_client().sadd(keys.paid, order_id)
        return {"order": order_id, "charge": charge}


@contextmanager
def _tracked(keys: SaleKeys) -> Iterator[None]:
    """Measurement for the report, not shop logic: note each retry, and each run that takes over a
    task from a worker that died while running it (its mark is still there)."""
    task = current_task()
    client = redis_client()
    pipe = client.pipeline(transaction=True)
    pipe.hget(keys.running, task.id)
    pipe.hset(keys.running, task.id, task.worker)
    before, _ = pipe.execute()
    if task.attempt > 1:
        client.sadd(keys.retries, f"{task.id}:{task.attempt}")
    if before is not None and before.decode() != task.worker:
        client.sadd(keys.recovered, task.id)
    try:
        yield
    finally:
        client.hdel(keys.running, task.id)
