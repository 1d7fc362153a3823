"""One drain, run and timed for any contestant: fill a queue, start its worker, watch it empty."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis

from benchmarks import procs
from benchmarks.names import COUNTER


@dataclass
class Contestant:
    """Something that drains a queue: ours, the raw loop, or a peer.

    `fill(url, body, n)` enqueues n calls of the body ("noop" or "incr") while no worker runs;
    `command(url, body)` is the worker's argv; `remaining(client)` counts what is not yet done.
    For the pickup latency (latency.py), `stamps(url, times)` sends one "stamp" task for each
    wall-clock time as `times` yields it, passing that time as the task's argument.
    """

    name: str
    settings: str
    fill: Callable[[str, str, int], None]
    command: Callable[[str, str], list[str]]
    remaining: Callable[[redis.Redis], int]
    env: dict[str, str] = field(default_factory=dict)
    stamps: Callable[[str, Iterator[float]], None] | None = None


@dataclass
class Drained:
    per_second: float
    worker_rss: int
    memory_before: int
    memory_queued: int
    memory_after: int


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def watch(
    remaining: Callable[[], int],
    n: int,
    proc: procs.Popen,
    timeout: float,
    poll: float = 0.005,
    stall: float = 30.0,
) -> float:
    """Tasks per second from the first finished task to the last, so worker start-up (imports,
    connecting) is not counted for anyone. Fails when the worker dies, makes no progress for
    `stall` seconds, or takes longer than `timeout` in all."""
    deadline = time.monotonic() + timeout
    first: tuple[float, int] | None = None
    last_change, last_left = time.monotonic(), n
    while True:
        left = remaining()
        now = time.perf_counter()
        if first is None and left < n:
            first = (now, left)
        if left == 0:
            break
        if left != last_left:
            last_change, last_left = time.monotonic(), left
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{procs.tail(proc)}")
        if time.monotonic() > min(deadline, last_change + stall):
            raise TimeoutError(f"{left} of {n} tasks left; worker log:\n{procs.tail(proc)}")
        time.sleep(poll)
    assert first is not None
    started, left_then = first
    return left_then / max(now - started, poll)


def drain(
    client: redis.Redis, url: str, who: Contestant, body: str, n: int, timeout: float
) -> Drained:
    """One timed drain of `n` queued tasks on an emptied database."""
    client.flushdb()
    before = used_memory(client)
    who.fill(url, body, n)
    queued = used_memory(client)
    if who.remaining(client) != n:
        raise RuntimeError(f"{who.name}: expected {n} queued, found {who.remaining(client)}")
    proc = procs.spawn(who.command(url, body), f"{who.name}-{body}", who.env)
    try:
        rate = watch(lambda: who.remaining(client), n, proc, timeout)
        rss = procs.tree_rss(proc.pid)
    finally:
        procs.stop(proc)
    if body == "incr" and int(client.get(COUNTER) or 0) < n:
        raise RuntimeError(f"{who.name}: only {client.get(COUNTER)} of {n} INCRs ran")
    return Drained(rate, rss, before, queued, used_memory(client))
