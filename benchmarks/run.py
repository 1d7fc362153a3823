"""The benchmark command: one redis-server, every measurement, medians of --runs, a table and JSON.

python -m benchmarks.run [--quick] [--runs 3] [--peers]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import drain, latency, ours, procs, report
from benchmarks.server import BenchRedis

BODIES = ("noop", "incr")
MIB = 2**20

T = TypeVar("T")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small N and one run, for a smoke test (under a minute)",
    )
    parser.add_argument("--runs", type=int, help="runs to take the median of (default 3)")
    parser.add_argument("--n", type=int, help="tasks per drain (default 20000)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="streamtasks worker threads, -c (default 16)"
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also run Celery, Dramatiq, arq, taskiq-redis and streaq if installed",
    )
    parser.add_argument("--json", help="also write the JSON to this path")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated sections to leave out: enqueue, drain, scaling, latency, recovery",
    )
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.n = args.n or (2_000 if args.quick else 20_000)
    args.enqueue_n = 1_000 if args.quick else 5_000
    args.latency_n = 100 if args.quick else 300
    args.timeout = 120.0 if args.quick else 600.0
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


class Run:
    """Samples of every measurement across runs, and what failed."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.runs: dict[str, list[int]] = defaultdict(list)  # the run each sample came from
        self.failures: dict[str, str] = {}

    def add(self, index: int, key: str, value: float) -> None:
        self.samples[key].append(value)
        self.runs[key].append(index)

    def attempt(self, key: str, fn: Callable[[], None]) -> None:
        began = time.monotonic()
        try:
            fn()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            self.failures[key] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            print(f"  {key}: FAILED {self.failures[key]}", file=sys.stderr)
            return
        print(f"  {key}: {time.monotonic() - began:.1f}s", file=sys.stderr)

    def median(self, key: str) -> float | None:
        return report.median(self.samples.get(key, []))

    def ratio(self, key: str, base_key: str) -> float | None:
        """The median over runs of key ÷ base_key, each taken within one run: a ratio of two
        medians could divide figures from different runs, which swing on this machine."""
        mine = dict(zip(self.runs.get(key, []), self.samples.get(key, []), strict=True))
        base = dict(zip(self.runs.get(base_key, []), self.samples.get(base_key, []), strict=True))
        return report.median([mine[i] / base[i] for i in mine if base.get(i)])


def rotated(cases: list[T], index: int, runs: int) -> list[T]:
    """The cases in the order of run `index`: rotated each run, so none always goes first (or
    right after another)."""
    shift = index * max(1, len(cases) // max(runs, 1))
    return cases[shift:] + cases[:shift]


def one_run(
    index: int, args: argparse.Namespace, server: BenchRedis, peers: list[Any], run: Run
) -> None:
    client = server.client()
    add = partial(run.add, index)

    if "enqueue" not in args.skip:

        def enqueue() -> None:
            for key, value in ours.enqueue_rates(client, args.enqueue_n).items():
                add(f"enqueue.{key}", value)

        run.attempt("enqueue", enqueue)

    if "drain" not in args.skip:
        cases: list[tuple[str, drain.Contestant, str]] = []
        for body in BODIES:
            cases.append((f"drain.{body}.raw", ours.raw(), body))
            for variant in ours.VARIANTS:
                cases.append(
                    (f"drain.{body}.{variant}", ours.streamtasks(variant, args.concurrency), body)
                )
            cases += [(f"drain.{body}.peer.{p.name}", p.contestant(), body) for p in peers]
        run.attempt(
            "drain.incr.async_ceiling",
            lambda: add("drain.incr.async_ceiling", ours.async_incr_ceiling(server.url, args.n)),
        )
        for key, who, body in rotated(cases, index, args.runs):

            def one(key: str = key, who: drain.Contestant = who, body: str = body) -> None:
                done = drain.drain(client, server.url, who, body, args.n, args.timeout)
                add(key, done.per_second)
                add(f"rss.{key}", done.worker_rss / MIB)
                if key == "drain.noop.ignore":
                    add("memory.redis_before", done.memory_before / MIB)
                    add("memory.redis_queued", done.memory_queued / MIB)
                    add("memory.redis_after", done.memory_after / MIB)

            run.attempt(key, one)

    if "scaling" not in args.skip:
        for processes in (2, 4):

            def scale(processes: int = processes) -> None:
                who = ours.streamtasks("ignore", args.concurrency, processes)
                done = drain.drain(client, server.url, who, "noop", args.n, args.timeout)
                add(f"scaling.p{processes}", done.per_second)

            run.attempt(f"scaling.p{processes}", scale)

    if "latency" not in args.skip:

        def latency_ours() -> None:
            found = ours.latency_streamtasks(client, server.url, args.latency_n, args.concurrency)
            for kind in ("pickup", "result"):
                for cut in ("p50", "p99"):
                    add(f"latency.{kind}.{cut}", found[kind][cut])

        def pickup(key: str, who: drain.Contestant) -> Callable[[], None]:
            def one() -> None:
                for cut, value in latency.pickup(client, server.url, who, args.latency_n).items():
                    add(f"{key}.{cut}", value)

            return one

        pickups = [("latency.raw_pickup", ours.raw())]
        pickups += [(f"latency.peer.{p.name}", p.contestant()) for p in peers]
        timed = [("latency", latency_ours)] + [(key, pickup(key, who)) for key, who in pickups]
        for key, measure in rotated(timed, index, args.runs):
            run.attempt(key, measure)

    if "recovery" not in args.skip:
        run.attempt("recovery", lambda: add("recovery.seconds", ours.recovery(client, server.url)))
    client.close()


def rows(
    args: argparse.Namespace, run: Run, peers: list[Any], skipped: dict[str, str]
) -> list[dict[str, Any]]:
    m = run.median
    out: list[dict[str, Any]] = []

    def row(
        section: str,
        case: str,
        key: str,
        unit: str,
        settings: str = "",
        raw_key: str | None = None,
        ours_key: str | None = None,
        attempt: str | None = None,
    ) -> None:
        """`attempt` is the measurement whose failure explains a missing value (default: key)."""
        value = m(key)
        attempt = attempt or key
        entry: dict[str, Any] = {
            "section": section,
            "case": case,
            "key": key,
            "value": value,
            "unit": unit,
            "settings": settings,
            "samples": run.samples.get(key, []),
        }
        if value is None and attempt in run.failures:
            entry["text"] = "FAILED"
            entry["settings"] = run.failures[attempt]
        # vs_raw is this / raw and ours/this is ours / this, whatever the unit: for tasks/s
        # higher is better, for ms and s lower is.
        if value and raw_key:
            entry["vs_raw"] = run.ratio(key, raw_key)
        if value and ours_key:
            entry["vs_ours"] = run.ratio(ours_key, key)
        out.append(entry)

    def skipped_rows(section: str, unit: str, prefix: str) -> None:
        for name, why in skipped.items():
            out.append(
                {
                    "section": section,
                    "case": name,
                    "key": f"{prefix}.{name}",
                    "value": None,
                    "unit": unit,
                    "text": "skipped",
                    "settings": why,
                }
            )

    row(
        "enqueue",
        "streamtasks .delay(), one at a time",
        "enqueue.delay",
        "msg/s",
        raw_key="enqueue.raw_xadd",
    )
    row(
        "enqueue",
        "streamtasks task.map, 100 per call",
        "enqueue.map",
        "msg/s",
        raw_key="enqueue.raw_pipeline",
    )
    row(
        "enqueue",
        "raw XADD, one per round trip",
        "enqueue.raw_xadd",
        "msg/s",
        "redis-py; message built like ours (uuid4 id, msgpack call)",
    )
    row("enqueue", "raw XADD, pipelined 100", "enqueue.raw_pipeline", "msg/s")

    for body in BODIES:
        section = f"drain {body}"
        raw_key = f"drain.{body}.raw"
        row(section, "raw redis-py loop", raw_key, "tasks/s", ours.raw().settings)
        for variant, label in ours.VARIANTS.items():
            row(
                section,
                f"streamtasks, {label}",
                f"drain.{body}.{variant}",
                "tasks/s",
                ours.streamtasks(variant, args.concurrency).settings,
                raw_key=raw_key,
            )
        if body == "incr":
            row(
                section,
                "redis.asyncio alone, 100 INCRs in flight",
                "drain.incr.async_ceiling",
                "tasks/s",
                "no queue, no worker: the most an async worker running this body could reach",
                raw_key=raw_key,
            )
        for p in peers:
            row(
                section,
                f"{p.name} {p.version}",
                f"drain.{body}.peer.{p.name}",
                "tasks/s",
                p.settings,
                raw_key=raw_key,
                ours_key=f"drain.{body}.ignore",
            )
        skipped_rows(section, "tasks/s", f"drain.{body}.peer")

    cores = os.cpu_count()
    for processes in (1, 2, 4):
        key = "drain.noop.ignore" if processes == 1 else f"scaling.p{processes}"
        row(
            "scaling",
            f"streamtasks -p {processes}, no-op, results ignored",
            key,
            "tasks/s",
            f"-c {args.concurrency}; machine has {cores} cores (Redis shares them)",
            raw_key="drain.noop.raw",
        )

    lat = (
        f"{args.latency_n} tasks {latency.GAP * 1000:g} ms apart to an idle worker (-c "
        f"{args.concurrency}), timed once {latency.WARM} warm-up tasks ran; lower is better"
    )
    for cut in ("p50", "p99"):
        row(
            "latency",
            f"streamtasks enqueue -> start, {cut}",
            f"latency.pickup.{cut}",
            "ms",
            lat if cut == "p50" else "",
            raw_key=f"latency.raw_pickup.{cut}",
            attempt="latency",
        )
    for cut in ("p50", "p99"):
        row(
            "latency",
            f"streamtasks enqueue -> get() returns, {cut}",
            f"latency.result.{cut}",
            "ms",
            attempt="latency",
        )
    for cut in ("p50", "p99"):
        row(
            "latency",
            f"raw loop enqueue -> start, {cut}",
            f"latency.raw_pickup.{cut}",
            "ms",
            "XREADGROUP BLOCK 1000" if cut == "p50" else "",
            attempt="latency.raw_pickup",
        )
    for p in peers:
        key = f"latency.peer.{p.name}"
        for cut in ("p50", "p99"):
            row(
                "latency",
                f"{p.name} {p.version} enqueue -> start, {cut}",
                f"{key}.{cut}",
                "ms",
                p.settings if cut == "p50" else "ours/this below 1.00x: ours starts sooner",
                raw_key=f"latency.raw_pickup.{cut}",
                ours_key=f"latency.pickup.{cut}",
                attempt=key,
            )
    skipped_rows("latency", "ms", "latency.peer")

    row(
        "memory",
        "streamtasks worker RSS after the no-op drain",
        "rss.drain.noop.ignore",
        "MiB",
        f"one process, -c {args.concurrency}",
    )
    row("memory", "raw loop RSS after the no-op drain", "rss.drain.noop.raw", "MiB")
    for p in peers:
        row(
            "memory",
            f"{p.name} worker RSS (all its processes)",
            f"rss.drain.noop.peer.{p.name}",
            "MiB",
        )
    row(
        "memory",
        "Redis used_memory before enqueue",
        "memory.redis_before",
        "MiB",
        "streamtasks no-op drain; FLUSHDB first; Lua script cache counts",
    )
    row("memory", f"Redis used_memory with {args.n:,} queued", "memory.redis_queued", "MiB")
    row(
        "memory",
        "Redis used_memory after the drain",
        "memory.redis_after",
        "MiB",
        "worker stopped; its stream and group remain",
    )

    row(
        "recovery",
        "kill -9 a worker holding tasks -> all done elsewhere",
        "recovery.seconds",
        "s",
        f"visibility_timeout={ours.VISIBILITY_TIMEOUT:g}s; {ours.HELD} running tasks "
        f"(-c {ours.HELD}); second worker already idle",
    )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    from benchmarks import peers as peer_registry

    run = Run()
    try:
        with BenchRedis() as server:
            os.environ["STREAMTASKS_URL"] = os.environ["BENCH_URL"] = server.url
            if args.peers:
                peers, skipped = peer_registry.available()
            else:
                peers, skipped = (
                    [],
                    dict.fromkeys(
                        peer_registry.NAMES,
                        "not run: pass --peers (and install the extra: pip install -e '.[bench]')",
                    ),
                )
            redis_version = server.version
            for index in range(args.runs):
                print(f"run {index + 1} of {args.runs}", file=sys.stderr)
                one_run(index, args, server, peers, run)
    finally:
        procs.stop_all()
    table_rows = rows(args, run, peers, skipped)
    meta = {
        "machine": report.machine(),
        "redis": redis_version,
        "commit": report.git_commit(),
        "runs": args.runs,
        "n": args.n,
        "quick": args.quick,
        "concurrency": args.concurrency,
        "enqueue_n": args.enqueue_n,
        "latency_n": args.latency_n,
        "peers": {p.name: p.version for p in peers},
        "peers_skipped": skipped,
    }
    text = report.table(table_rows)
    cpu = meta["machine"]
    print(
        f"\nstreamtasks {meta['commit']} | Redis {redis_version} (no persistence) | "
        f"{cpu['cpus']} cores {cpu['cpu_model']} | Python {cpu['python']} | "
        f"medians of {args.runs} run(s), N={args.n:,}\n"
    )
    print(text)
    path = report.write_json(
        {"meta": meta, "rows": table_rows, "samples": run.samples, "failures": run.failures}
    )
    if args.json:
        Path(args.json).write_text(path.read_text())
    print(f"\nJSON: {path}")
    if run.failures:
        print(f"failed: {', '.join(run.failures)}; worker logs in {procs.log_dir()}")
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
