"""The table printed at the end of a run and the JSON written beside it."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).resolve().parent / "results"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def machine() -> dict[str, Any]:
    freq = psutil.cpu_freq()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": psutil.cpu_count(),
        "cpu_model": model,
        "cpu_mhz": round(freq.current) if freq else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args], capture_output=True, text=True, cwd=RESULTS.parent.parent, timeout=10
    )
    return done.stdout.strip()


def git_commit() -> str:
    try:
        dirty = _git("status", "--porcelain", "streamtasks")
        return _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "s"):
        return f"{value:,.2f}"
    if unit == "MiB":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    if not value:
        return ""
    # Two decimals, or three below 0.1x, where a polling peer's latency would read "0.00x".
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def table(rows: list[dict[str, Any]]) -> str:
    """Rows of {section, case, value, unit, vs_raw, vs_ours, settings} as aligned text."""
    head = ["section", "case", "median", "unit", "vs raw", "ours/this", "settings / notes"]
    body = []
    for r in rows:
        body.append(
            [
                r["section"],
                r["case"],
                r.get("text") or _number(r.get("value"), r["unit"]),
                r["unit"],
                _ratio(r.get("vs_raw")),
                _ratio(r.get("vs_ours")),
                r.get("settings", ""),
            ]
        )
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for i, cells in enumerate([head, *body]):
        left = [
            str(c).ljust(w) if j < 2 else str(c).rjust(w)
            for j, (c, w) in enumerate(zip(cells, widths, strict=False))
        ]
        lines.append("  ".join([*left, str(cells[-1])]).rstrip())
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def write_json(data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"bench-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    return path
