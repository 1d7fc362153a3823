"""The sale: fire the buyers' requests, run the workers, kill one mid-run, wait for every result,
and measure what happened in a Report."""

from __future__ import annotations

import dataclasses
import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from streamtasks.demo.crew import Crew
from streamtasks.demo.display import Display, Snapshot
from streamtasks.demo.shop import (
    DECLINED_CARD,
    GOOD_CARD,
    SaleKeys,
    app,
    charge_payment,
    place_order,
    redis_client,
)
from streamtasks.errors import ConfigurationError, StreamTasksError, TaskError
from streamtasks.result import AsyncResult

T = TypeVar("T")

PRODUCT, STOCK = "A", 100
REQUESTS, BUYERS, THREADS, DECLINED_BUYERS = 1000, 200, 100, 16
SEED, WORKERS = 2024, 3
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
    """What one sale did, as measured from the results, the dead letters and the shop's keys."""

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


def run_sale(
    url: str,
    *,
    seed: int = SEED,
    workers: int = WORKERS,
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
    redis_client().set(keys.stock, STOCK)
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
        redis_client().delete(*keys.all())
        app.close()
    return report


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
    waiting: Future[T],
    keys: SaleKeys,
    crew: Crew,
    report: Report,
    began: float,
    give_up: float,
    display: Display | None,
) -> T:
    """Show progress until every result is in; kill the busiest worker once payments flow."""
    while True:
        if time.monotonic() - began > give_up:
            raise StreamTasksError(f"the sale did not finish in {give_up:.0f}s\n{crew.logs()}")
        try:
            outcome: T | None = waiting.result(timeout=TICK)
        except FutureTimeout:
            outcome = None
        elapsed = time.monotonic() - began
        snap = _snapshot(keys, report.accepted, crew.states())
        if display is not None:
            display.update(elapsed, snap, final=outcome is not None)
        if outcome is not None:
            return outcome
        crew.check()
        if report.killed_worker is None and snap.paid + snap.declined >= KILL_AFTER:
            _kill_busiest(keys, crew, report, elapsed, display)


def _snapshot(keys: SaleKeys, accepted: int, workers: dict[str, str]) -> Snapshot:
    """The sale's counters, read from the shop's keys in one round trip."""
    pipe = redis_client().pipeline(transaction=False)
    pipe.hvals(keys.orders)
    for counted in (keys.paid, keys.declined, keys.retries):
        pipe.scard(counted)
    pipe.get(keys.stock)
    orders, paid, declined, retries, stock = pipe.execute()
    answers = Counter(orders)
    return Snapshot(
        accepted,
        answers[b"reserved"],
        answers[b"sold_out"],
        paid,
        declined,
        retries,
        int(stock or 0),
        workers,
    )


def _kill_busiest(
    keys: SaleKeys, crew: Crew, report: Report, elapsed: float, display: Display | None
) -> None:
    """kill -9 the worker running the most tasks right now (none: try again next tick)."""
    running = Counter(crew.names.get(w.decode(), "?") for w in redis_client().hvals(keys.running))
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
    """Fill in the report's outcome: from the results, the dead letters and the shop's keys."""
    client = redis_client()
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
