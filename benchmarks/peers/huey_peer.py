"""huey as a peer: the RedisHuey its consumer loads (benchmarks.peers.huey_peer.huey) and how the
harness drives it."""

from __future__ import annotations

from collections.abc import Iterator

import redis
from huey import RedisHuey

from benchmarks import bodies, procs
from benchmarks.drain import Contestant
from benchmarks.peers._common import sync_client, url

# blocking=True is RedisHuey's default, spelled out: its workers wait in BRPOP instead of
# polling with a growing sleep, as huey's consumer does for storages that cannot block.
huey = RedisHuey("bench", url=url() or "redis://127.0.0.1:1", blocking=True, results=False)


@huey.task(name="noop")
def noop(*args: object) -> None:
    bodies.noop(*args)


@huey.task(name="incr")
def incr(*args: object) -> None:
    bodies.incr(sync_client())


@huey.task(name="stamp")
def stamp(enqueued_at: float) -> None:
    bodies.stamp(sync_client(), enqueued_at)


WORKERS = 16
SETTINGS = (
    f"RedisHuey, results=False, blocking=True (BRPOP, the default); consumer -k thread "
    f"-w {WORKERS} (thread: the docs' choice for neither CPU- nor IO-heavy work; default -w 1, "
    f"docs: at least 2; {WORKERS} as ours), -q (warnings only: INFO, the default, logs two lines "
    "per task); no ack, so a task counts as done once popped"
)


def _fill(_url: str, body: str, n: int) -> None:
    task = {"noop": noop, "incr": incr}[body]
    for _ in range(n):
        task()


def _stamps(_url: str, times: Iterator[float]) -> None:
    for at in times:
        stamp(at)


def _remaining(client: redis.Redis) -> int:
    # The consumer pops a task off this list (BRPOP) and runs it; nothing is kept until it ends.
    return int(client.llen(huey.storage.queue_key))


def contestant() -> Contestant:
    return Contestant(
        name="huey",
        settings=SETTINGS,
        fill=_fill,
        remaining=_remaining,
        command=lambda _url, _body: procs.python(
            "-m",
            "huey.bin.huey_consumer",
            "benchmarks.peers.huey_peer.huey",
            "-k",
            "thread",
            "-w",
            str(WORKERS),
            "-q",
        ),
        stamps=_stamps,
    )
