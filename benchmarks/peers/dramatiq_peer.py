"""Dramatiq as a peer: the broker and actors its worker loads and how the harness drives it."""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from benchmarks import bodies, procs
from benchmarks.drain import Contestant
from benchmarks.peers._common import sync_client, url

broker = RedisBroker(url=url())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", queue_name="default")
def noop(*args: object) -> None:
    bodies.noop(*args)


@dramatiq.actor(actor_name="incr", queue_name="default")
def incr(*args: object) -> None:
    bodies.incr(sync_client())


@dramatiq.actor(actor_name="stamp", queue_name="default")
def stamp(enqueued_at: float) -> None:
    bodies.stamp(sync_client(), enqueued_at)


THREADS = 32
SETTINGS = (
    f"RedisBroker, default middleware (no results); one process -p 1, -t {THREADS} threads "
    "(default 8; the issue's best figure used 32)"
)


def _fill(_url: str, body: str, n: int) -> None:
    actor = {"noop": noop, "incr": incr}[body]
    for _ in range(n):
        actor.send()


def _stamps(_url: str, times: Iterator[float]) -> None:
    for at in times:
        stamp.send(at)


def _remaining(client: redis.Redis) -> int:
    # A message's body stays in the queue's .msgs hash until it is acked.
    return int(client.hlen("dramatiq:default.msgs"))


def contestant() -> Contestant:
    return Contestant(
        name="dramatiq",
        settings=SETTINGS,
        fill=_fill,
        remaining=_remaining,
        command=lambda _url, _body: procs.python(
            "-m",
            "dramatiq",
            "benchmarks.peers.dramatiq_peer",
            "-p",
            "1",
            "-t",
            str(THREADS),
        ),
        stamps=_stamps,
    )
