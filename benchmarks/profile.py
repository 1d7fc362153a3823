"""Profile one streamtasks worker with py-spy during a drain and print its hottest lines.

pip install py-spy
python -m benchmarks.profile [--n 200000] [--concurrency 16] [--body noop|incr]
    [--variant ignore|results|keyed] [--gil]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import ours, procs
from benchmarks.server import BenchRedis

Ranked = list[tuple[str, int]]


def hot_spots(collapsed: Path, top: int) -> tuple[Ranked, Ranked, int]:
    """(self samples by frame, inclusive samples by frame, total) from py-spy's collapsed output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return own.most_common(top), inclusive.most_common(top), total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--body", choices=["noop", "incr"], default="noop")
    parser.add_argument("--variant", choices=list(ours.VARIANTS), default="ignore")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to sample")
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(tempfile.mkdtemp(prefix="streamtasks-profile-")) / "worker.collapsed"
    try:
        with BenchRedis() as server:
            os.environ["STREAMTASKS_URL"] = server.url
            client = server.client()
            ours.streamtasks(args.variant, args.concurrency).fill(server.url, args.body, args.n)
            command = ours.st_worker(args.concurrency)(server.url, args.body)
            worker = procs.spawn(command, "profiled")
            while client.xlen(ours.STREAM) == args.n and worker.poll() is None:
                time.sleep(0.01)  # sample the drain itself, not the imports
            record = [
                spy,
                "record",
                "--pid",
                str(worker.pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--duration",
                str(int(args.seconds)),
                "--output",
                str(out),
                "--nonblocking",
            ]
            subprocess.run(
                [*record, *(["--gil"] if args.gil else [])],
                check=True,
                capture_output=True,
                timeout=args.seconds + 60,
            )
            left = client.xlen(ours.STREAM)
            procs.stop(worker)
    finally:
        procs.stop_all()
    own, inclusive, total = hot_spots(out, args.top)
    print(f"{total} samples; {left} of {args.n} tasks left when sampling stopped; raw: {out}\n")
    print("self time (where the samples were):")
    for frame, n in own:
        print(f"  {100 * n / total:5.1f}%  {frame}")
    print("\ninclusive time (the frame or anything it called):")
    for frame, n in inclusive:
        print(f"  {100 * n / total:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
