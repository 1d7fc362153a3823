"""What the peer modules share: the Redis URL they are pointed at and their task bodies' clients."""

from __future__ import annotations

import os

import redis
import redis.asyncio

from benchmarks.names import COUNTER


def url() -> str:
    """The benchmark's own server; run.py sets BENCH_URL before any peer module is imported."""
    return os.environ.get("BENCH_URL", "")


_sync: redis.Redis | None = None
_async: redis.asyncio.Redis | None = None


def sync_client() -> redis.Redis:
    """The task bodies' client; the asyncio peers' stamp task uses it too: the time is taken
    before its one blocking RPUSH, and the next stamp comes latency.GAP later, so blocking the
    event loop that long changes no figure."""
    global _sync
    if _sync is None:
        _sync = redis.Redis.from_url(url())
    return _sync


async def async_incr() -> None:
    """The INCR body for the asyncio peers: one round trip on an asyncio redis-py client."""
    global _async
    if _async is None:
        _async = redis.asyncio.Redis.from_url(url())
    await _async.incr(COUNTER)


def stream_remaining(client: redis.Redis, stream: str, group: str) -> int:
    """Entries of a consumer group not yet delivered plus those delivered but not acked."""
    for info in client.xinfo_groups(stream):
        name = info["name"]
        if (name.decode() if isinstance(name, bytes) else name) == group:
            return int(info["lag"] or 0) + int(info["pending"])
    return int(client.xlen(stream))
