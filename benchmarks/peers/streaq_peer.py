"""streaq as a peer: the Worker its command loads and how the harness drives it."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import redis
from streaq import Worker

from benchmarks import bodies, procs
from benchmarks.drain import Contestant
from benchmarks.peers._common import async_incr, sync_client, url

worker = Worker(redis_url=url() or "redis://127.0.0.1:1")


@worker.task(ttl=0)
async def noop(*args: object) -> None:
    pass


@worker.task(ttl=0)
async def incr(*args: object) -> None:
    await async_incr()


@worker.task(ttl=0)
async def stamp(enqueued_at: float) -> None:
    bodies.stamp(sync_client(), enqueued_at)


SETTINGS = "one process, concurrency 16 (default), ttl=0 (results ignored)"


def _fill(_url: str, body: str, n: int) -> None:
    task = {"noop": noop, "incr": incr}[body]

    async def fill() -> None:
        async with worker:
            for start in range(0, n, 1000):
                await worker.enqueue_many([task.enqueue() for _ in range(min(1000, n - start))])

    anyio.run(fill)


def _stamps(_url: str, times: Iterator[float]) -> None:
    async def send() -> None:
        async with worker:
            for at in times:
                await stamp.enqueue(at)

    anyio.run(send)


def _remaining(client: redis.Redis) -> int:
    # streaq acks and deletes an entry in one step when the task ends.
    return int(client.xlen("streaq:default:queues:normal"))


def contestant() -> Contestant:
    return Contestant(
        name="streaq",
        settings=SETTINGS,
        fill=_fill,
        remaining=_remaining,
        command=lambda _url, _body: procs.python(
            "-m",
            "streaq",
            "run",
            "benchmarks.peers.streaq_peer:worker",
        ),
        stamps=_stamps,
    )
