"""taskiq-redis (its Redis Streams broker) as a peer: the broker its worker loads and how the
harness drives it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import redis
from taskiq_redis import RedisStreamBroker

from benchmarks import bodies, procs
from benchmarks.drain import Contestant
from benchmarks.peers._common import async_incr, stream_remaining, sync_client, url

broker = RedisStreamBroker(url=url() or "redis://127.0.0.1:1")


@broker.task(task_name="noop")
async def noop(*args: object) -> None:
    pass


@broker.task(task_name="incr")
async def incr(*args: object) -> None:
    await async_incr()


@broker.task(task_name="stamp")
async def stamp(enqueued_at: float) -> None:
    bodies.stamp(sync_client(), enqueued_at)


SETTINGS = (
    "RedisStreamBroker, no result backend; --workers 1, max-async-tasks 100 and "
    "ack when saved (defaults), --log-level WARNING"
)


def _fill(_url: str, body: str, n: int) -> None:
    task = {"noop": noop, "incr": incr}[body]

    async def fill() -> None:
        await broker.startup()  # creates the consumer group, at "$", before anything is added
        for start in range(0, n, 100):
            await asyncio.gather(*(task.kiq() for _ in range(min(100, n - start))))
        await broker.shutdown()

    asyncio.run(fill())


def _stamps(_url: str, times: Iterator[float]) -> None:
    async def send() -> None:
        await broker.startup()  # the consumer group, if the worker has not made it yet
        for at in times:
            await stamp.kiq(at)
        await broker.shutdown()

    asyncio.run(send())


def _remaining(client: redis.Redis) -> int:
    return stream_remaining(client, "taskiq", "taskiq")


def contestant() -> Contestant:
    return Contestant(
        name="taskiq-redis",
        settings=SETTINGS,
        fill=_fill,
        remaining=_remaining,
        command=lambda _url, _body: procs.python(
            "-m",
            "taskiq",
            "worker",
            "benchmarks.peers.taskiq_peer:broker",
            "--workers",
            "1",
            "--log-level",
            "WARNING",
        ),
        stamps=_stamps,
    )
