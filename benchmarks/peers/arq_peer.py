"""arq as a peer: the WorkerSettings its worker loads and how the harness drives it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import redis
from arq import create_pool
from arq.connections import RedisSettings

from benchmarks import bodies, procs
from benchmarks.drain import Contestant
from benchmarks.peers._common import async_incr, sync_client, url


async def noop(ctx: dict[str, Any], *args: object) -> None:
    pass


async def incr(ctx: dict[str, Any], *args: object) -> None:
    await async_incr()


async def stamp(ctx: dict[str, Any], enqueued_at: float) -> None:
    bodies.stamp(sync_client(), enqueued_at)


MAX_JOBS = 100


class WorkerSettings:
    functions = [noop, incr, stamp]  # noqa: RUF012 - arq reads these as class attributes
    redis_settings = RedisSettings.from_dsn(url() or "redis://127.0.0.1:1")
    keep_result = 0
    max_jobs = MAX_JOBS


SETTINGS = (
    f"one process, max_jobs={MAX_JOBS} (default 10), keep_result=0 (results ignored), "
    "poll_delay 0.5s (default: the worker polls its queue), arq held at 0.25 by the redis pin "
    "of later versions"
)


def _fill(_url: str, body: str, n: int) -> None:
    async def fill() -> None:
        pool = await create_pool(WorkerSettings.redis_settings)
        for start in range(0, n, 100):
            await asyncio.gather(*(pool.enqueue_job(body) for _ in range(min(100, n - start))))
        await pool.aclose()

    asyncio.run(fill())


def _stamps(_url: str, times: Iterator[float]) -> None:
    async def send() -> None:
        pool = await create_pool(WorkerSettings.redis_settings)
        for at in times:
            await pool.enqueue_job("stamp", at)
        await pool.aclose()

    asyncio.run(send())


def _remaining(client: redis.Redis) -> int:
    return int(client.zcard("arq:queue"))


def contestant() -> Contestant:
    return Contestant(
        name="arq",
        settings=SETTINGS,
        fill=_fill,
        remaining=_remaining,
        command=lambda _url, _body: procs.python(
            "-m",
            "arq",
            "benchmarks.peers.arq_peer.WorkerSettings",
        ),
        stamps=_stamps,
    )
