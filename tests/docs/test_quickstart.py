"""docs/quickstart.md, run as written: its files are written to a fresh folder, its worker runs as
a real process, its snippets and commands run against a real Redis, and its test suite passes.

Install commands are the one thing not run here (they would fetch the package); they are checked
to name this distribution and extras it has, and CI itself installs the package that way."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import WorkerProcess
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
FILE_NAME = re.compile(r"^# ([\w.\-/]+\.(?:py|toml))\n")

pytestmark = pytest.mark.timeout(120)


def blocks() -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in FENCE.finditer(QUICKSTART.read_text())]


def commands(script: str) -> list[str]:
    """The shell lines of a block, without comments."""
    lines = []
    for line in script.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def check_install(line: str) -> None:
    """The command names this distribution (or a checkout of it) and extras it has."""
    installed = importlib.metadata.metadata("streamtasks-queue")
    [target] = [w for w in shlex.split(line)[2:] if not w.startswith("-")]
    name, _, extras = target.partition("[")
    assert name in (installed["Name"], "."), f"{line!r} installs {name}, not {installed['Name']}"
    for extra in extras.rstrip("]").split(","):
        assert not extra or extra in installed.get_all("Provides-Extra"), f"no extra {extra!r}"


def test_every_block_of_the_quickstart_runs_as_written(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    env = {**os.environ, "STREAMTASKS_URL": own_redis.url, "PYTHONPATH": str(tmp_path)}
    env.pop("PYTEST_ADDOPTS", None)
    cli = [sys.executable, "-m", "streamtasks"]
    workers: list[WorkerProcess] = []
    ran = 0
    try:
        for language, text in blocks():
            named = FILE_NAME.match(text)
            if named:
                (tmp_path / named[1]).write_text(text)
                continue
            if language == "python":
                done = subprocess.run(
                    [sys.executable, "-c", text],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert done.returncode == 0, f"{text}\n{done.stdout}{done.stderr}"
                ran += 1
                continue
            assert language == "sh", f"a {language or 'plain'} block the test cannot run: {text}"
            for line in commands(text):
                words = shlex.split(line)
                if words[:2] == ["pip", "install"]:
                    check_install(line)
                elif words[:2] == ["streamtasks", "worker"]:
                    worker = WorkerProcess(words[1:], env, cwd=tmp_path)
                    workers.append(worker)
                    processes = int(words[words.index("-p") + 1]) if "-p" in words else 1
                    worker.ready(processes, timeout=30)
                elif words[0] == "streamtasks":
                    done = subprocess.run(
                        cli + words[1:],
                        cwd=tmp_path,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=60,
                        stdin=subprocess.DEVNULL,
                    )
                    assert done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}"
                elif words[0] == "pytest":
                    done = subprocess.run(
                        [sys.executable, "-m", *words, "-p", "no:cacheprovider"],
                        cwd=tmp_path,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=60,
                    )
                    assert done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}"
                    assert re.search(r"\d+ passed", done.stdout), done.stdout
                else:
                    pytest.fail(f"a command the test does not know how to run: {line}")
                ran += 1
        for worker in workers:
            worker.signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0, worker.log
    finally:
        for worker in workers:
            worker.destroy()
    assert ran >= 5, "the quickstart lost its examples"
