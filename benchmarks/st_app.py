"""The streamtasks app that the benchmark's worker subprocesses load: -A benchmarks.st_app."""

from __future__ import annotations

import asyncio
import os
import threading

import redis
import redis.asyncio

from benchmarks import bodies
from streamtasks import App

app = App(
    "bench",
    visibility_timeout=float(os.environ.get("BENCH_VISIBILITY_TIMEOUT", "30")),
)

_client: redis.Redis | None = None
_lock = threading.Lock()


def client() -> redis.Redis:
    """A plain client for the task bodies' own Redis calls (the app's URL, set by --url)."""
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                _client = redis.Redis.from_url(app.url)
    return _client


@app.task(ignore_result=True)
def noop(*args: object) -> None:
    bodies.noop(*args)


@app.task
def noop_result(*args: object) -> None:
    bodies.noop(*args)


@app.task(ignore_result=True)
def incr(*args: object) -> None:
    bodies.incr(client())


@app.task
def incr_result(*args: object) -> None:
    bodies.incr(client())


@app.task(ignore_result=True)
async def noop_async(*args: object) -> None:
    bodies.noop(*args)


# One redis.asyncio client per event loop (a worker process has one), made on first use in it.
_async_clients: dict[asyncio.AbstractEventLoop, redis.asyncio.Redis] = {}


@app.task(ignore_result=True)
async def incr_async(*args: object) -> None:
    loop = asyncio.get_running_loop()
    found = _async_clients.get(loop)
    if found is None:
        # A blocking pool: redis-py's default refuses more than 100 connections, and up to
        # --async-concurrency INCRs are in flight at once.
        pool = redis.asyncio.BlockingConnectionPool.from_url(app.url, max_connections=64)
        found = _async_clients[loop] = redis.asyncio.Redis(connection_pool=pool)
    await bodies.aincr(found)


@app.task
def stamp(enqueued_at: float) -> None:
    bodies.stamp(client(), enqueued_at)


@app.task(ignore_result=True)
def hold(seconds: float) -> None:
    bodies.hold(client(), seconds)
