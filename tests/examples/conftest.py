"""Helpers for the example tests: run an example or the CLI as a user would, as a subprocess, and
find processes it may have left behind."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_example() -> Callable[..., dict[str, Any]]:
    """`python -m examples.NAME --url URL --json` from the repository root; returns the report."""

    def run(name: str, url: str, *args: str, timeout: float = 60) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", f"examples.{name}", "--url", url, "--json", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        report: dict[str, Any] = json.loads(proc.stdout)
        return report

    return run


def survivors(marker: str, wait: float = 10.0) -> list[str]:
    """Command lines of live processes mentioning `marker`, once any that are exiting are gone."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    _, alive = psutil.wait_procs(found, timeout=wait)
    left = []
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(" ".join(proc.info["cmdline"]))
    return left
