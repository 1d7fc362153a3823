"""Every subprocess the harness starts: each in its own process group, all of them ended on exit."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

_live: list[subprocess.Popen[bytes]] = []
_logs: Path | None = None


def log_dir() -> Path:
    """Where the subprocesses' output goes: one folder per harness run, made on first use."""
    global _logs
    if _logs is None:
        _logs = Path(tempfile.mkdtemp(prefix="streamtasks-bench-logs-"))
    return _logs


#: The repository root: subprocesses run here so `benchmarks.*` modules import.
ROOT = Path(__file__).resolve().parent.parent


def spawn(argv: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session (so its children can be ended with it), output to a log."""
    log_path = log_dir() / f"{name}.log"
    log = log_path.open("ab")
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        start_new_session=True,
    )
    log.close()
    proc.log_path = log_path  # type: ignore[attr-defined]
    _live.append(proc)
    return proc


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def tail(proc: subprocess.Popen[bytes], lines: int = 20) -> str:
    path: Path = proc.log_path  # type: ignore[attr-defined]
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `timeout`."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    # Children of a supervisor may outlive it for a moment; end the whole group.
    _signal_group(proc, signal.SIGKILL)
    proc.wait(timeout=timeout)
    if proc in _live:
        _live.remove(proc)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """kill -9 this one process only (not its group), as a crash would."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def stop_all() -> None:
    for proc in list(_live):
        _signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        _live.remove(proc)


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in members:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total
