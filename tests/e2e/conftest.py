"""Fixtures for the end-to-end tests: `streamtasks worker` as a real subprocess, a producer App
with the same tasks, and the traces the tasks leave in Redis.

Every worker a test starts is killed (with its children) when the test ends, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from streamtasks import App
from tests.e2e.tasks import APP_ENV, VISIBILITY_ENV, Traces, build_app
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
TASKS = "tests.e2e.tasks:app"
GROUP = "streamtasks"


def worker_env(app_name: str, url: str, visibility_timeout: float = 1.0) -> dict[str, str]:
    return {
        **os.environ,
        "STREAMTASKS_URL": url,
        APP_ENV: app_name,
        VISIBILITY_ENV: str(visibility_timeout),
    }


class WorkerProcess:
    """One `streamtasks ...` subprocess whose stderr (the log) is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path = ROOT):
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamtasks", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def lines(self, pattern: str) -> list[str]:
        """Log lines matching a regular expression."""
        with self._changed:
            return [line for line in self._lines if re.search(pattern, line)]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        """Wait until `count` log lines match `pattern`; fail with the log if they do not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self._lines if re.search(pattern, line)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (not self._reader.is_alive() and self.proc.poll() is not None):
                    break
                self._changed.wait(min(left, 0.5))
        raise AssertionError(
            f"expected {count} log line(s) matching {pattern!r} within {timeout}s "
            f"(exit code {self.proc.poll()}); log:\n{self.log}"
        )

    def ready(self, workers: int = 1, timeout: float = 10.0) -> WorkerProcess:
        self.wait_for(r"serving", count=workers, timeout=timeout)
        return self

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """kill -9, and wait until it is gone."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        """The exit code; fails the test if the process is still running after `timeout`."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker still running {timeout}s later; log:\n{self.log}"
            ) from None
        self._reader.join(timeout=5)
        return code

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def destroy(self) -> None:
        """Kill it and anything it started; used by the fixture after every test."""
        leftovers = self.children()
        if self.proc.poll() is None:
            self.proc.kill()
        for child in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        self.proc.wait(timeout=10)
        psutil.wait_procs(leftovers, timeout=10)


Spawn = Callable[..., WorkerProcess]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start `streamtasks <args>` with an env; every process started is killed at teardown."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str]) -> WorkerProcess:
        process = WorkerProcess(list(args), env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.destroy()


class Scene:
    """One test's app: a producer App, its Redis, the task traces, and workers to start."""

    def __init__(self, app_name: str, server: RedisServer, spawn: Spawn, visibility: float = 1.0):
        self.name = app_name
        self.server = server
        self.spawn = spawn
        self.visibility = visibility
        self.app: App = build_app(app_name, server.url, visibility)
        self.redis = server.client()
        self.traces = Traces(app_name, self.redis)
        self.stream = self.app.keys(self.app.default_queue).stream

    def env(self, **overrides: Any) -> dict[str, str]:
        env = worker_env(self.name, self.server.url, self.visibility)
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    def worker(
        self, *args: str, ready: int = 1, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        """Start `streamtasks worker -A tests.e2e.tasks:app ARGS` and wait until it serves."""
        process = self.spawn("worker", "-A", TASKS, *args, env=env or self.env())
        if ready:
            process.ready(ready)
        return process

    def cli(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run another `streamtasks` command to completion."""
        return subprocess.run(
            [sys.executable, "-m", "streamtasks", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cli_json(self, *args: str) -> Any:
        done = self.cli(*args, "-A", TASKS, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def task(self, name: str) -> Any:
        return self.app.tasks[f"e2e.{name}"]

    def pending(self) -> list[dict[str, Any]]:
        """The group's pending entries (XPENDING): delivered to a consumer, not yet acked."""
        return self.redis.xpending_range(self.stream, GROUP, "-", "+", 10_000)

    def close(self) -> None:
        self.app.close()
        self.redis.close()


@pytest.fixture
def scene(redis_server: RedisServer, app_name: str, spawn: Spawn) -> Iterator[Scene]:
    """A scene on the session's Redis, with a 1 s visibility timeout."""
    s = Scene(app_name, redis_server, spawn)
    yield s
    s.close()


@pytest.fixture
def make_scene(app_name: str, spawn: Spawn) -> Iterator[Callable[..., Scene]]:
    """Build a scene on another server or with another visibility timeout."""
    made: list[Scene] = []

    def make(server: RedisServer, visibility: float = 1.0) -> Scene:
        s = Scene(app_name, server, spawn, visibility)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
