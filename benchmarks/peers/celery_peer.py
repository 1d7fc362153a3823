"""Celery as a peer: the app its worker loads (-A benchmarks.peers.celery_peer) and how the harness
fills, starts and watches it."""

from __future__ import annotations

from collections.abc import Iterator

import redis
from celery import Celery

from benchmarks import bodies, procs
from benchmarks.drain import Contestant
from benchmarks.peers._common import sync_client, url

app = Celery("bench", broker=url())
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop(*args: object) -> None:
    bodies.noop(*args)


@app.task(name="incr")
def incr(*args: object) -> None:
    bodies.incr(sync_client())


@app.task(name="stamp")
def stamp(enqueued_at: float) -> None:
    bodies.stamp(sync_client(), enqueued_at)


SETTINGS = (
    "redis broker, acks_late, no result backend; prefork pool -c 2 (the default: one child per "
    "core), prefetch multiplier 4 (default), -l warning"
)


def _fill(_url: str, body: str, n: int) -> None:
    task = {"noop": noop, "incr": incr}[body]
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            task.apply_async(producer=producer)


def _stamps(_url: str, times: Iterator[float]) -> None:
    with app.producer_or_acquire() as producer:
        for at in times:
            stamp.apply_async((at,), producer=producer)


def _remaining(client: redis.Redis) -> int:
    # Kombu's Redis transport moves a delivered message from the list into "unacked" until acked.
    return int(client.llen("celery")) + int(client.hlen("unacked"))


def contestant() -> Contestant:
    return Contestant(
        name="celery",
        settings=SETTINGS,
        fill=_fill,
        remaining=_remaining,
        command=lambda _url, _body: procs.python(
            "-m",
            "celery",
            "-A",
            "benchmarks.peers.celery_peer",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-l",
            "warning",
        ),
        stamps=_stamps,
    )
