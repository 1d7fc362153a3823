"""The benchmark harness runs end to end in --quick mode and reports every figure; no speed is
asserted here (figures on a shared 2-core machine are not pass/fail material)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = [
    "enqueue.delay", "enqueue.map", "enqueue.raw_xadd", "enqueue.raw_pipeline",
    "drain.noop.raw", "drain.noop.ignore", "drain.noop.results", "drain.noop.keyed",
    "drain.incr.raw", "drain.incr.ignore", "drain.incr.results", "drain.incr.keyed",
    "scaling.p2", "scaling.p4",
    "latency.pickup.p50", "latency.pickup.p99", "latency.result.p50", "latency.result.p99",
    "latency.raw_pickup.p50", "latency.raw_pickup.p99",
    "rss.drain.noop.ignore", "memory.redis_before", "memory.redis_queued", "memory.redis_after",
    "recovery.seconds",
]  # fmt: skip


@pytest.mark.timeout(240)
def test_quick_run_prints_a_table_and_writes_json_with_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for heading in (
        "enqueue",
        "drain noop",
        "drain incr",
        "scaling",
        "latency",
        "memory",
        "recovery",
        "vs raw",
    ):
        assert heading in done.stdout
    data = json.loads(out.read_text())
    assert data["failures"] == {}
    for key in EXPECTED:
        assert data["samples"][key], key
    assert data["meta"]["machine"]["cpus"] >= 1
    skipped = {row["case"] for row in data["rows"] if row.get("text") == "skipped"}
    assert skipped == {"celery", "dramatiq", "arq", "taskiq-redis", "streaq", "huey"}
