"""The streamtasks app that the benchmark's worker subprocesses load: -A benchmarks.st_app."""

from __future__ import annotations

import os
import threading

import redis

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


@app.task
def stamp(enqueued_at: float) -> None:
    bodies.stamp(client(), enqueued_at)


@app.task(ignore_result=True)
def hold(seconds: float) -> None:
    bodies.hold(client(), seconds)
