"""The task bodies every contestant runs: a true no-op, one Redis round trip, a start-time stamp."""

from __future__ import annotations

import time

import redis
import redis.asyncio

from benchmarks.names import COUNTER, DONE, HOLDING, STAMPS, STARTED


def noop(*args: object) -> None:
    """Does nothing; takes and ignores any arguments so bulk APIs can pass one."""


def incr(client: redis.Redis) -> None:
    """One Redis round trip."""
    client.incr(COUNTER)


async def aincr(client: redis.asyncio.Redis) -> None:
    """One Redis round trip, awaited: many are in flight at once on one event loop."""
    await client.incr(COUNTER)


def stamp(client: redis.Redis, enqueued_at: float) -> None:
    """Record how long after `enqueued_at` (wall clock) the task started."""
    client.rpush(STAMPS, time.time() - enqueued_at)


def hold(client: redis.Redis, seconds: float) -> None:
    """Note the start, stay busy while HOLDING is set (at most `seconds`), note the end: the
    crash-recovery case holds tasks in a worker it then kills."""
    client.rpush(STARTED, 1)
    deadline = time.monotonic() + seconds
    while client.exists(HOLDING) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.rpush(DONE, 1)
