"""`streamtasks demo`: the Black Friday sale on an embedded Redis, as a user runs it."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from streamtasks.demo.display import Display, Snapshot
from tests.examples.conftest import survivors

STREAMTASKS = shutil.which("streamtasks", path=str(Path(sys.executable).parent)) or "streamtasks"


def test_the_demo_shows_progress_then_the_report_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    proc = subprocess.run(
        [STREAMTASKS, "demo"], cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    took = time.monotonic() - began
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Not a terminal: progress comes as plain lines, not redrawn in place.
    assert "\x1b[" not in out
    assert re.search(r"^\[\s*\d+\.\d+s\] orders: 200 accepted, .* \| stock \d+", out, re.M)
    assert re.search(r"^\[\s*\d+\.\d+s\] kill -9 worker w\d while it ran \d+ orders", out, re.M)

    numbers = {k: int(v) for k, v in re.findall(r"^  ([a-z][a-z -]*?)\s{2,}(\d+)", out, re.M)}
    assert numbers["requests"] == 1000
    assert (numbers["accepted"], numbers["duplicates blocked"]) == (200, 800)
    assert (numbers["sold"], numbers["sold out"], numbers["final stock"]) == (100, 100, 0)
    assert numbers["paid"] + numbers["dead-lettered"] == 100
    assert numbers["dead-lettered"] >= 1
    assert numbers["retries"] >= 1
    assert numbers["charged twice"] == 0
    assert numbers["recovered"] >= 1
    assert took < 45
    # The embedded server and workers it started are gone, and so is their data.
    assert survivors(str(tmp_path)) == []
    assert list(tmp_path.glob("streamtasks-demo-*")) == []


def _snapshot(paid: int, workers: dict[str, str]) -> Snapshot:
    return Snapshot(200, 100, 100, paid, 3, 10, 0, workers)


def test_on_a_terminal_the_progress_is_redrawn_in_place() -> None:
    out = io.StringIO()
    display = Display(out, live=True)
    display.update(0.5, _snapshot(10, {"w1": "up", "w2": "up"}))
    display.event(0.6, "kill -9 worker w2")
    display.update(0.7, _snapshot(20, {"w1": "up", "w2": "killed"}))
    display.update(0.8, _snapshot(30, {"w1": "up", "w2": "killed"}))

    text = out.getvalue()
    # The event erased the block and stayed; each later update redrew the 3-line block.
    assert text.count("\x1b[3F\x1b[J") == 2
    assert text.count("kill -9 worker w2") == 1
    final = text.rsplit("\x1b[J", 1)[1]
    assert "30 paid" in final and "w2 killed" in final


def test_off_a_terminal_the_progress_is_a_line_a_second() -> None:
    out = io.StringIO()
    display = Display(out, live=False, every=1.0)
    for tenth in range(1, 26):
        display.update(tenth / 10, _snapshot(tenth, {"w1": "up"}))

    lines = out.getvalue().splitlines()
    assert [line.split("]")[0] for line in lines] == ["[ 1.0s", "[ 2.0s"]
