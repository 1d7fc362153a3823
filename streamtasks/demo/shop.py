"""The Black Friday demo (seed 000): a shop's tasks, a sale that runs them on real worker processes
and kills one with SIGKILL mid-run, the live progress display, and the report.

`streamtasks demo` runs it on a fresh embedded Redis; `python -m examples.blackfriday` on any URL.
The first part, the shop, is the code a user writes; the rest drives the sale and measures it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from streamtasks import embedded
from streamtasks.app import App
from streamtasks.context import current_task
from streamtasks.errors import ConfigurationError, Reject, StreamTasksError, TaskError
from streamtasks.result import AsyncResult

T = TypeVar("T")

# -- the shop: what a user writes ------------------------------------------------------------

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


def _redis() -> Any:
    """The app's Redis client for the shop's own keys (untyped: redis-py's replies are loose)."""
    return app.broker.client


def _lua(source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    client = _redis()
    return client.register_script(source)(keys=list(keys), args=list(args), client=client)


def gateway_charge(
    keys: SaleKeys, order_id: str, card: str, amount: int, idempotency_key: str
) -> str:
    """A stand-in payment gateway: 50-150 ms a call; about 30% of calls time out, half of them
    after the money moved (what makes retrying a payment dangerous); DECLINED_CARD is refused."""
    call = int(_redis().hincrby(keys.gateway_calls, order_id, 1))
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
            _redis().sadd(keys.declined, order_id)
            raise Reject(f"card declined: {exc}") from exc
        _redis().sadd(keys.paid, order_id)
        return {"order": order_id, "charge": charge}


@contextmanager
def _tracked(keys: SaleKeys) -> Iterator[None]:
    """Measurement for the report, not shop logic: note each retry, and each run that takes over a
    task from a worker that died while running it (its mark is still there)."""
    task = current_task()
    client = _redis()
    pipe = client.pipeline(transaction=True)
    pipe.hget(keys.running, task.id)
    pipe.hset(keys.running, task.id, task.worker)
    before, _ = pipe.execute()
    if task.attempt > 0:
        client.sadd(keys.retries, f"{task.id}:{task.attempt}")
    if before is not None and before.decode() != task.worker:
        client.sadd(keys.recovered, task.id)
    try:
        yield
    finally:
        client.hdel(keys.running, task.id)


# -- the sale: fire the requests, run the workers, kill one, wait, measure -----------------------

PRODUCT, STOCK = "A", 100
REQUESTS, BUYERS, THREADS, DECLINED_BUYERS = 1000, 200, 100, 16
KILL_AFTER = 20  # payments finished before one worker is killed
TICK = 0.05


def clicks(seed: int) -> list[tuple[str, str]]:
    """(buyer, card) for every request: each buyer clicks at least once, many click again."""
    rng = random.Random(seed)
    buyers = [f"buyer{n:03d}" for n in range(BUYERS)]
    declined = set(rng.sample(buyers, DECLINED_BUYERS))
    who = buyers + [rng.choice(buyers) for _ in range(REQUESTS - BUYERS)]
    rng.shuffle(who)
    return [(b, DECLINED_CARD if b in declined else GOOD_CARD) for b in who]


@dataclass
class Report:
    requests: int
    buyers: int
    threads: int
    stock: int
    accepted: int = 0
    duplicates_blocked: int = 0
    sold: int = 0
    sold_out: int = 0
    paid: int = 0
    retries: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    final_stock: int = 0
    charged: int = 0
    charged_twice: int = 0
    workers: int = 0
    killed_worker: str | None = None
    killed_exit_code: int | None = None
    killed_while_running: int = 0
    recovered: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        lines = [
            f"Black Friday: {self.requests:,} order requests from {self.buyers} buyers on "
            f"{self.threads} threads, product {PRODUCT}, stock {self.stock}"
        ]

        def row(label: str, value: object, note: str = "") -> None:
            lines.append(f"  {label:<20}{value!s:>6}   {note}".rstrip())

        row("requests", self.requests)
        row("accepted", self.accepted)
        row("duplicates blocked", self.duplicates_blocked, "same buyer and product: one order")
        row("sold", self.sold)
        row("sold out", self.sold_out)
        row("paid", self.paid)
        row("retries", self.retries, "gateway timeouts, retried with backoff")
        row(
            "dead-lettered",
            self.dead_lettered,
            "; ".join(f"{n} x {reason}" for reason, n in self.dead_letter_reasons.items()),
        )
        row("final stock", self.final_stock)
        row("charged twice", self.charged_twice, f"gateway ledger: {self.charged} orders charged")
        row(
            "recovered",
            self.recovered,
            f"runs taken over from {self.killed_worker or 'no worker'} after kill -9",
        )
        row("time taken", f"{self.seconds:.1f}s")
        return "\n".join(lines)


@dataclass(frozen=True)
class Snapshot:
    accepted: int
    sold: int
    sold_out: int
    paid: int
    declined: int
    retries: int
    stock: int
    workers: dict[str, str]

    @classmethod
    def read(cls, keys: SaleKeys, accepted: int, workers: dict[str, str]) -> Snapshot:
        pipe = _redis().pipeline(transaction=False)
        pipe.hvals(keys.orders)
        for counted in (keys.paid, keys.declined, keys.retries):
            pipe.scard(counted)
        pipe.get(keys.stock)
        orders, paid, declined, retries, stock = pipe.execute()
        answers = Counter(orders)
        return cls(
            accepted,
            answers[b"reserved"],
            answers[b"sold_out"],
            paid,
            declined,
            retries,
            int(stock or 0),
            workers,
        )


class Display:
    """Progress while the sale runs: redrawn in place on a terminal, a line a second otherwise."""

    def __init__(self, out: IO[str] | None = None, live: bool | None = None, every: float = 1.0):
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.every = every
        self._drawn = 0
        self._last = 0.0

    def event(self, elapsed: float, text: str) -> None:
        self._erase()
        self.out.write(f"[{elapsed:4.1f}s] {text}\n")
        self._drawn = 0
        self.out.flush()

    def update(self, elapsed: float, s: Snapshot, final: bool = False) -> None:
        up = sum(state == "up" for state in s.workers.values())
        workers = "  ".join(f"{name} {state}" for name, state in s.workers.items())
        if self.live:
            self._erase()
            lines = [
                f"  orders    {s.accepted:>4} accepted  {s.sold:>4} sold  {s.sold_out:>4} sold out"
                f"  stock left {s.stock}",
                f"  payments  {s.paid:>4} paid      {s.declined:>4} declined"
                f"  {s.retries:>4} retries",
                f"  workers   {workers}   {elapsed:4.1f}s",
            ]
            self.out.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        elif final or elapsed - self._last >= self.every:
            self._last = elapsed
            self.out.write(
                f"[{elapsed:4.1f}s] orders: {s.accepted} accepted, {s.sold} sold, {s.sold_out} "
                f"sold out | payments: {s.paid} paid, {s.declined} declined, {s.retries} retries "
                f"| stock {s.stock} | workers up {up}/{len(s.workers)}\n"
            )
        self.out.flush()

    def _erase(self) -> None:
        if self.live and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # back to the block's first line, clear
        self._drawn = 0


class Crew:
    """The `streamtasks worker` processes of one sale, each logging to a file in `log_dir`."""

    def __init__(self, url: str, sale: str, size: int, concurrency: int, log_dir: Path):
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.names: dict[str, str] = {}  # consumer name -> short name shown
        self.killed: set[str] = set()
        self.log_dir = log_dir
        for n in range(1, size + 1):
            short, name = f"w{n}", f"bf-{sale}-w{n}"
            with open(log_dir / f"{short}.log", "wb") as log:
                self.procs[short] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "streamtasks",
                        "worker",
                        "-A",
                        "streamtasks.demo:app",
                        "--url",
                        url,
                        "-c",
                        str(concurrency),
                        "-n",
                        name,
                        "-l",
                        "warning",
                        "--shutdown-timeout",
                        "10",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.names[name] = short

    def states(self) -> dict[str, str]:
        return {
            s: "killed" if s in self.killed else "up" if p.poll() is None else "exited"
            for s, p in self.procs.items()
        }

    def check(self) -> None:
        for short, proc in self.procs.items():
            if short not in self.killed and proc.poll() is not None:
                raise StreamTasksError(
                    f"worker {short} exited with {proc.returncode}\n{self.logs()}"
                )

    def logs(self) -> str:
        """The end of each worker's log, for an error message."""
        return "\n".join(
            f"--- {short}.log\n"
            + (self.log_dir / f"{short}.log").read_text(errors="replace")[-1500:]
            for short in self.procs
        )

    def kill(self, short: str) -> int:
        """kill -9: no shutdown, no hand-back; what it held stays pending on it."""
        self.killed.add(short)
        self.procs[short].send_signal(signal.SIGKILL)
        return self.procs[short].wait()

    def stop(self) -> None:
        alive = [p for p in self.procs.values() if p.poll() is None]
        for proc in alive:
            proc.send_signal(signal.SIGTERM)
        for proc in alive:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def fire(sale: str, requests: list[tuple[str, str]]) -> list[AsyncResult[dict[str, str]]]:
    """Send every request from THREADS threads released at the same instant."""
    barrier = threading.Barrier(THREADS)

    def click(chunk: list[tuple[str, str]]) -> list[AsyncResult[dict[str, str]]]:
        barrier.wait()
        return [place_order.delay(sale, buyer, PRODUCT, card) for buyer, card in chunk]

    with ThreadPoolExecutor(THREADS) as pool:
        sent = pool.map(click, [requests[i::THREADS] for i in range(THREADS)])
        return [result for chunk in sent for result in chunk]


def collect(
    orders: list[AsyncResult[dict[str, str]]], timeout: float
) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
    """Wait for every order, then for the payment of every order that got stock."""
    deadline = time.monotonic() + timeout
    placed = [r.get(timeout=max(0.1, deadline - time.monotonic())) for r in orders]
    payments = []
    for order in placed:
        if order["status"] != "reserved":
            continue
        result = app.AsyncResult(order["payment"], charge_payment.queue)
        try:
            result.get(timeout=max(0.1, deadline - time.monotonic()))
            payments.append((result.id, "SUCCESS"))
        except TaskError as exc:
            payments.append((result.id, exc.status))
    return placed, payments


def run_sale(
    url: str,
    *,
    seed: int = 2024,
    workers: int = 3,
    concurrency: int = 4,
    display: Display | None = None,
    timeout: float = 60.0,
) -> Report:
    """Run one sale against `url` and measure it."""
    if workers < 2:
        raise ConfigurationError("the sale kills one worker mid-run, so it needs at least two")
    app.close()
    app.url = url
    keys = SaleKeys(uuid.uuid4().hex[:8])
    report = Report(REQUESTS, BUYERS, THREADS, STOCK, workers=workers)
    _redis().set(keys.stock, STOCK)
    try:
        with tempfile.TemporaryDirectory(prefix="streamtasks-demo-logs-") as log_dir:
            crew = Crew(url, keys.sale, workers, concurrency, Path(log_dir))
            try:
                began = time.monotonic()
                sent = fire(keys.sale, clicks(seed))
                orders = list({r.id: r for r in sent}.values())
                report.accepted, report.duplicates_blocked = len(orders), len(sent) - len(orders)
                waiting = _in_background(collect, orders, timeout)
                placed, payments = _watch(waiting, keys, crew, report, began, timeout + 5, display)
                report.seconds = round(time.monotonic() - began, 2)
            finally:
                crew.stop()
        _measure(keys, report, placed, payments)
    finally:
        _redis().delete(*keys.all())
        app.close()
    return report


def _in_background(fn: Callable[..., T], *args: Any) -> Future[T]:
    """Run fn in a daemon thread, which cannot keep the process alive if the sale is abandoned."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def _watch(
    waiting: Future[Any],
    keys: SaleKeys,
    crew: Crew,
    report: Report,
    began: float,
    give_up: float,
    display: Display | None,
) -> Any:
    """Show progress until every result is in; kill the busiest worker once payments flow."""
    while True:
        if time.monotonic() - began > give_up:
            raise StreamTasksError(f"the sale did not finish in {give_up:.0f}s\n{crew.logs()}")
        try:
            outcome = waiting.result(timeout=TICK)
        except FutureTimeout:
            outcome = None
        elapsed = time.monotonic() - began
        snap = Snapshot.read(keys, report.accepted, crew.states())
        if display is not None:
            display.update(elapsed, snap, final=outcome is not None)
        if outcome is not None:
            return outcome
        crew.check()
        if report.killed_worker is None and snap.paid + snap.declined >= KILL_AFTER:
            _kill_busiest(keys, crew, report, elapsed, display)


def _kill_busiest(
    keys: SaleKeys, crew: Crew, report: Report, elapsed: float, display: Display | None
) -> None:
    """kill -9 the worker running the most tasks right now (none: try again next tick)."""
    running = Counter(crew.names.get(w.decode(), "?") for w in _redis().hvals(keys.running))
    busiest = max(crew.procs, key=lambda short: running[short])
    if not running[busiest]:
        return
    report.killed_worker, report.killed_while_running = busiest, running[busiest]
    report.killed_exit_code = crew.kill(busiest)
    if display is not None:
        display.event(
            elapsed,
            f"kill -9 worker {busiest} while it ran {running[busiest]} "
            f"orders; the others take them over once idle {app.visibility_timeout:g}s",
        )


def _measure(
    keys: SaleKeys, report: Report, placed: list[dict[str, str]], payments: list[tuple[str, str]]
) -> None:
    client = _redis()
    report.sold = sum(o["status"] == "reserved" for o in placed)
    report.sold_out = sum(o["status"] == "sold_out" for o in placed)
    report.paid = sum(status == "SUCCESS" for _, status in payments)
    ours = {task_id for task_id, _ in payments}
    letters = [d for d in app.dead_letters(charge_payment.queue).list() if d.get("id") in ours]
    report.dead_lettered = len(letters)
    report.dead_letter_reasons = dict(Counter(d.reason for d in letters))
    report.retries = int(client.scard(keys.retries))
    report.recovered = int(client.scard(keys.recovered))
    report.final_stock = int(client.get(keys.stock) or 0)
    captures = [int(n) for n in client.hvals(keys.gateway_captures)]
    report.charged = len(captures)
    report.charged_twice = sum(n > 1 for n in captures)


# -- running it: a fresh embedded Redis, and `streamtasks demo` ---------------------------------


@contextmanager
def fresh_embedded() -> Iterator[str]:
    """An embedded:// URL on a new data dir; its server is stopped and the dir removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="streamtasks-demo-"))
    try:
        yield f"embedded://{directory}"
    finally:
        embedded.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)


def run_demo(as_json: bool = False, out: IO[str] | None = None) -> int:
    """`streamtasks demo`: the sale on a fresh embedded Redis, with progress, then the report."""
    out = out or sys.stdout
    display = None if as_json else Display(out)
    if display is not None:
        out.write(
            f"Black Friday: {REQUESTS:,} order requests from {BUYERS} buyers on {THREADS} "
            f"threads for product {PRODUCT} (stock {STOCK}), 3 worker processes\n"
        )
    with fresh_embedded() as url:
        report = run_sale(url, display=display)
    out.write(json.dumps(report.as_dict(), indent=2) if as_json else "\n" + report.format())
    out.write("\n")
    return 0 if report.final_stock == 0 and report.charged_twice == 0 else 1
