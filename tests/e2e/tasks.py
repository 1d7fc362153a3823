"""The tasks the end-to-end tests run inside real `streamtasks worker` processes.

A worker loads `tests.e2e.tasks:app`, whose name, URL and visibility timeout come from the
environment its test gives it (`worker_env`); the test process builds a producer App with the same
tasks through `build_app`. Tasks leave their traces under `Traces` keys in the same Redis, so a test
can tell how often each one started and how often it completed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from streamtasks import (
    App,
    Reject,
    SoftTimeLimitExceeded,
    TaskRevoked,
    TimeLimitExceeded,
    current_task,
)

APP_ENV = "STREAMTASKS_E2E_APP"
VISIBILITY_ENV = "STREAMTASKS_E2E_VISIBILITY"

#: How long a held task waits for its gate before giving up (no test should get near it).
HOLD_LIMIT = 25.0


class Traces:
    """The Redis keys where tasks record what they did, shared by the tasks and the tests."""

    def __init__(self, app_name: str, client: redis.Redis):
        self.prefix = f"{app_name}:e2e"
        self.client = client

    def runs(self, token: str) -> int:
        """How many times a task with this token started."""
        return int(self.client.get(f"{self.prefix}:runs:{token}") or 0)

    def completions(self, token: str) -> int:
        """How many times a task with this token got to the end of its work."""
        return int(self.client.get(f"{self.prefix}:done:{token}") or 0)

    def ledger(self) -> dict[str, int]:
        """Cents charged per order by the payment task."""
        raw = self.client.hgetall(f"{self.prefix}:ledger")
        return {k.decode(): int(v) for k, v in raw.items()}

    def started(self, timeout: float) -> str:
        """Wait until a held task starts running; its token."""
        found = self.client.blpop([f"{self.prefix}:started"], timeout=timeout)
        if found is None:
            raise AssertionError(f"no held task started within {timeout}s")
        return found[1].decode()

    def open_gate(self) -> None:
        """Let every held task, running now or later, finish."""
        self.client.rpush(f"{self.prefix}:gate", "open")

    def allow(self, token: str) -> None:
        self.client.set(f"{self.prefix}:allow:{token}", 1)

    # -- used inside the tasks -------------------------------------------------------------

    def count_run(self, token: str) -> None:
        self.client.incr(f"{self.prefix}:runs:{token}")

    def count_completion(self, token: str) -> None:
        self.client.incr(f"{self.prefix}:done:{token}")

    def hold(self, token: str) -> None:
        """Announce the start, then block until the test opens the gate (no sleeping)."""
        self.client.rpush(f"{self.prefix}:started", token)
        gate = f"{self.prefix}:gate"
        deadline = time.monotonic() + HOLD_LIMIT
        # Moving the gate's one element onto itself leaves it there, so every waiter gets through.
        # Blocking one second at a time stays under any socket timeout the client may have.
        while self.client.blmove(gate, gate, 1, "RIGHT", "LEFT") is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"gate of {token} never opened")

    def allowed(self, token: str) -> bool:
        return bool(self.client.exists(f"{self.prefix}:allow:{token}"))

    def note(self, token: str, what: str) -> None:
        """Record that a task got somewhere (cleaned up, was cancelled)."""
        self.client.rpush(f"{self.prefix}:notes:{token}", what)

    def notes(self, token: str) -> list[str]:
        return [n.decode() for n in self.client.lrange(f"{self.prefix}:notes:{token}", 0, -1)]

    def wait_note(self, token: str, timeout: float) -> None:
        """Wait until a task with this token notes something (the note stays)."""
        notes = f"{self.prefix}:notes:{token}"
        if self.client.blmove(notes, notes, timeout, "RIGHT", "RIGHT") is None:
            raise AssertionError(f"{token} noted nothing within {timeout}s")

    def stuck(self, token: str) -> None:
        """Announce the start, then block in one socket read until the gate opens, as a call to
        a service that never answers does: nothing raised in the thread reaches it meanwhile."""
        self.client.rpush(f"{self.prefix}:started", token)
        gate = f"{self.prefix}:gate"
        self.client.blmove(gate, gate, HOLD_LIMIT, "RIGHT", "LEFT")

    def charge(self, order_id: str, cents: int) -> None:
        self.client.hincrby(f"{self.prefix}:ledger", order_id, cents)


def build_app(name: str, url: str | None = None, visibility_timeout: float = 1.0) -> App:
    """An App with every e2e task, on `url` (None: STREAMTASKS_URL)."""
    app = App(name, url=url, visibility_timeout=visibility_timeout)

    def traces() -> Traces:
        return Traces(app.name, app.broker.client)

    @app.task(name="e2e.square")
    def square(x: int) -> int:
        return x * x

    @app.task(name="e2e.record")
    def record(token: str) -> str:
        t = traces()
        t.count_run(token)
        t.count_completion(token)
        return token

    @app.task(name="e2e.hold")
    def hold(token: str) -> str:
        t = traces()
        t.count_run(token)
        t.hold(token)
        t.count_completion(token)
        return token

    @app.task(name="e2e.charge", idempotency_key=lambda order_id, *_a, **_k: f"charge:{order_id}")
    def charge(order_id: str, cents: int, held: bool = False) -> dict[str, Any]:
        t = traces()
        t.count_run(order_id)
        if held:
            t.hold(order_id)
        t.charge(order_id, cents)
        t.count_completion(order_id)
        return {"order": order_id, "charged": cents}

    @app.task(name="e2e.busy")
    def busy(token: str, seconds: float) -> str:
        t = traces()
        t.count_run(token)
        time.sleep(seconds)  # the run's length is what the test is about
        t.count_completion(token)
        return current_task().worker

    @app.task(name="e2e.pay_unless_blocked")
    def pay_unless_blocked(token: str) -> str:
        t = traces()
        if not t.allowed(token):
            raise Reject("card declined")
        t.count_completion(token)
        return "paid"

    @app.task(name="e2e.import_catalog")
    def import_catalog(token: str, items: int) -> int:
        t = traces()
        current_task().set_progress({"done": items // 2, "of": items})
        t.hold(token)
        current_task().set_progress({"done": items, "of": items})
        return items

    @app.task(name="e2e.watch")
    def watch(token: str) -> str:
        """Runs until it is revoked (or its gate opens), looking now and then."""
        t = traces()
        t.count_run(token)
        t.client.rpush(f"{t.prefix}:started", token)
        gate = f"{t.prefix}:gate"
        deadline = time.monotonic() + HOLD_LIMIT
        while not current_task().revoked:
            if t.client.blmove(gate, gate, 0.05, "RIGHT", "LEFT") is not None:
                return "finished"
            if time.monotonic() > deadline:
                raise RuntimeError(f"{token} was never revoked")
        raise TaskRevoked("stopped on request")

    @app.task(name="e2e.async_import_catalog")
    async def async_import_catalog(token: str, items: int) -> int:
        await current_task().aset_progress({"done": items // 2, "of": items})
        await async_hold(token)
        await current_task().aset_progress({"done": items, "of": items})
        return items

    @app.task(name="e2e.async_hold")
    async def async_hold(token: str) -> str:
        """The async twin of hold: many of these wait on one event loop."""
        client = redis.asyncio.Redis.from_url(app.url)
        prefix = f"{app.name}:e2e"
        try:
            await client.incr(f"{prefix}:runs:{token}")
            await client.rpush(f"{prefix}:started", token)
            gate = f"{prefix}:gate"
            deadline = time.monotonic() + HOLD_LIMIT
            while await client.blmove(gate, gate, 0.5, "RIGHT", "LEFT") is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gate of {token} never opened")
            await client.incr(f"{prefix}:done:{token}")
        finally:
            await client.aclose()
        return token

    def steps_until_stopped(token: str, note: Callable[[SoftTimeLimitExceeded], str]) -> str:
        """Works in short steps, never looking for a reason to stop: only a soft limit stops
        it, and it notes what it was told."""
        t = traces()
        t.client.rpush(f"{t.prefix}:started", token)
        deadline = time.monotonic() + HOLD_LIMIT
        try:
            while time.monotonic() < deadline:
                time.sleep(0.01)  # one step of the work
        except SoftTimeLimitExceeded as exc:
            t.note(token, note(exc))
            raise
        return "never stopped"

    @app.task(name="e2e.clean_up_late", soft_time_limit=0.5, time_limit=10)
    def clean_up_late(token: str) -> str:
        return steps_until_stopped(token, lambda exc: f"cleaned up: {type(exc).__name__}")

    @app.task(name="e2e.stuck", time_limit=1)
    def stuck(token: str) -> str:
        t = traces()
        t.count_run(token)
        try:
            t.stuck(token)
            t.count_completion(token)
        finally:
            t.note(token, "returned")
        return "answered at last"

    @app.task(
        name="e2e.stuck_once",
        time_limit=1,
        autoretry_for=(TimeLimitExceeded,),
        max_retries=1,
        retry_backoff=0.05,
        retry_jitter=False,
    )
    def stuck_once(token: str) -> int:
        t = traces()
        t.count_run(token)
        if current_task().attempt == 1:
            t.stuck(token)
        return current_task().attempt

    async def wait_for_ever(token: str) -> str:
        t = traces()
        t.count_run(token)
        t.client.rpush(f"{t.prefix}:started", token)
        try:
            await asyncio.sleep(HOLD_LIMIT)
        except asyncio.CancelledError:
            t.note(token, "cancelled")
            raise
        return "woke up"

    app.task(name="e2e.async_stuck", time_limit=1)(wait_for_ever)
    app.task(name="e2e.async_wait")(wait_for_ever)

    @app.task(name="e2e.async_clean_up_late", soft_time_limit=0.5, time_limit=10)
    async def async_clean_up_late(token: str) -> str:
        try:
            await asyncio.sleep(HOLD_LIMIT)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(0.01)  # cleaning up may await too
            return "cleaned up"
        return "never stopped"

    @app.task(name="e2e.stop_when_revoked", soft_time_limit=HOLD_LIMIT)
    def stop_when_revoked(token: str) -> str:
        return steps_until_stopped(token, lambda exc: f"stopped: {type(exc).__name__}")

    @app.task(name="e2e.divide")
    def divide(total: int, parts: int) -> float:
        return total / parts

    @app.task(
        name="e2e.gateway_down",
        autoretry_for=(ConnectionError,),
        max_retries=1,
        retry_backoff=0.05,
        retry_jitter=False,
    )
    def gateway_down(order_id: str) -> None:
        raise ConnectionError(f"payment gateway unreachable for {order_id}")

    return app


app = build_app(
    os.environ.get(APP_ENV, "e2e"),
    visibility_timeout=float(os.environ.get(VISIBILITY_ENV, "1.0")),
)
