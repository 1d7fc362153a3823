"""arq as a peer: the WorkerSettings its worker loads and how the harness drives it."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from arq import create_pool
from arq.connections import RedisSettings

from benchmarks import procs
from benchmarks.drain import Contestant
from benchmarks.peers._common import async_incr, url


async def noop(ctx: dict[str, Any], *args: object) -> None:
    pass


async def incr(ctx: dict[str, Any], *args: object) -> None:
    await async_incr()


MAX_JOBS = 100


class WorkerSettings:
    functions = [noop, incr]  # noqa: RUF012 - arq reads these as class attributes
    redis_settings = RedisSettings.from_dsn(url() or "redis://127.0.0.1:1")
    keep_result = 0
    max_jobs = MAX_JOBS


SETTINGS = (
    f"one process, max_jobs={MAX_JOBS} (default 10), keep_result=0 (results ignored), "
    "arq held at 0.25 by the redis pin of later versions"
)


def _fill(_url: str, body: str, n: int) -> None:
    async def fill() -> None:
        pool = await create_pool(WorkerSettings.redis_settings)
        for start in range(0, n, 100):
            await asyncio.gather(*(pool.enqueue_job(body) for _ in range(min(100, n - start))))
        await pool.aclose()

    asyncio.run(fill())


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
    )
