"""Pickup latency, measured one way for any contestant: tasks sent GAP apart to an idle worker, each
recording how long after its enqueue it started (bodies.stamp)."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Iterator

import redis

from benchmarks import procs
from benchmarks.drain import Contestant
from benchmarks.names import STAMPS

#: Seconds between two sends: light load, each task reaches a worker that is waiting for work.
GAP = 0.005
#: Tasks sent, and waited for, before the timed ones, so that the worker has connected, imported
#: what it imports lazily and run a task in more than one of its threads or children.
WARM = 10


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 and p99 of durations in seconds, in milliseconds."""
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": statistics.median(ordered) * 1000, "p99": cuts[98] * 1000}


def ticks(n: int) -> Iterator[float]:
    """The wall-clock time, n times, each GAP after the previous one (later if the caller's step
    took longer); the first comes GAP from now. The caller sends a task stamped with each."""
    due = time.time()
    for _ in range(n):
        due += GAP
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)
        due = time.time()
        yield due


def _collect(
    client: redis.Redis, proc: subprocess.Popen[bytes], count: int, timeout: float
) -> list[float]:
    """Pop `count` stamps, waiting for each as long as the worker lives, `timeout` in all."""
    deadline = time.monotonic() + timeout
    found: list[float] = []
    while len(found) < count:
        popped = client.blpop([STAMPS], timeout=1)
        if popped is not None:
            found.append(float(popped[1]))
        elif proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{procs.tail(proc)}")
        elif time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(found)} of {count} tasks ran in {timeout}s:\n{procs.tail(proc)}"
            )
    return found


def pickup(client: redis.Redis, url: str, who: Contestant, n: int) -> dict[str, float]:
    """p50/p99 in ms from enqueue to start of `n` stamp tasks sent GAP apart, timed only once the
    worker has run WARM of them: its start-up does not count."""
    if who.stamps is None:
        raise ValueError(f"{who.name} cannot send stamp tasks")
    client.flushdb()
    proc = procs.spawn(who.command(url, "stamp"), f"{who.name}-latency", who.env)

    def times() -> Iterator[float]:
        for _ in range(WARM):
            yield time.time()
        _collect(client, proc, WARM, 120.0)
        yield from ticks(n)

    try:
        who.stamps(url, times())
        return percentiles(_collect(client, proc, n, 30.0))
    finally:
        procs.stop(proc)
