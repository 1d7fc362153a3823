"""The worker processes of one sale: ordinary `streamtasks worker` subprocesses, started, watched,
one of them killed with SIGKILL, and the rest stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from streamtasks.errors import StreamTasksError

# The package re-exports the shop's `app`; importing it registers the shop's tasks in the worker.
APP_TARGET = "streamtasks.demo:app"


class Crew:
    """The `streamtasks worker` processes of one sale, each logging to a file in `log_dir`."""

    def __init__(self, url: str, sale: str, size: int, concurrency: int, log_dir: Path):
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.names: dict[str, str] = {}  # consumer name -> short name shown
        self.killed: set[str] = set()
        self.log_dir = log_dir
        for n in range(1, size + 1):
            short, name = f"w{n}", f"bf-{sale}-w{n}"
            with open(log_dir / f"{short}.log", "wb") as log:
                self.procs[short] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "streamtasks",
                        "worker",
                        "-A",
                        APP_TARGET,
                        "--url",
                        url,
                        "-c",
                        str(concurrency),
                        "-n",
                        name,
                        "-l",
                        "warning",
                        "--shutdown-timeout",
                        "10",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.names[name] = short

    def states(self) -> dict[str, str]:
        return {
            s: "killed" if s in self.killed else "up" if p.poll() is None else "exited"
            for s, p in self.procs.items()
        }

    def check(self) -> None:
        """Raise if a worker that was not killed has exited."""
        for short, proc in self.procs.items():
            if short not in self.killed and proc.poll() is not None:
                raise StreamTasksError(
                    f"worker {short} exited with {proc.returncode}\n{self.logs()}"
                )

    def logs(self) -> str:
        """The end of each worker's log, for an error message."""
        return "\n".join(
            f"--- {short}.log\n"
            + (self.log_dir / f"{short}.log").read_text(errors="replace")[-1500:]
            for short in self.procs
        )

    def kill(self, short: str) -> int:
        """kill -9: no shutdown, no hand-back; what it held stays pending on it."""
        self.killed.add(short)
        self.procs[short].send_signal(signal.SIGKILL)
        return self.procs[short].wait()

    def stop(self) -> None:
        """SIGTERM every live worker and wait for its graceful shutdown; SIGKILL after 15s."""
        alive = [p for p in self.procs.values() if p.poll() is None]
        for proc in alive:
            proc.send_signal(signal.SIGTERM)
        for proc in alive:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
