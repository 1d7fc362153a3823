"""`streamtasks worker -p P`: run P worker processes and restart any that dies."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

#: Set in the environment of the children, which then leave SIGINT to the supervisor.
SUPERVISED_ENV = "STREAMTASKS_SUPERVISED"
#: Where a child writes the loopback port it serves its metrics and probes on.
PORT_FILE_ENV = "STREAMTASKS_METRICS_PORT_FILE"
#: click's exit status for a usage error.
USAGE_ERROR = 2
#: A child's exit status when it gave up on a thread stuck past a task's time limit, and wants
#: a new process in its place at once.
REPLACE_ME = 3
_RESTART_DELAY_MAX = 30.0
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_HEALTHY_AFTER = 60.0


class Signals:
    """Tells a first stop signal from a repeat: `timeout`, Ctrl-C on a terminal and systemd send
    one to each process of the group, so two within `window` seconds count as one."""

    FIRST, REPEAT, AGAIN = "first", "repeat", "again"

    def __init__(self, window: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.clock = clock
        self._first: float | None = None

    def heard(self) -> str:
        """FIRST for the first signal, REPEAT for one within the window, AGAIN after it."""
        now = self.clock()
        if self._first is None:
            self._first = now
            return self.FIRST
        return self.REPEAT if now - self._first < self.window else self.AGAIN


def _child_argv(argv: list[str], name: str, probes: bool = False) -> list[str]:
    """The parent's worker arguments with -p/--processes and -n/--name replaced, and with
    `probes`, the metrics port moved to one of the child's own on loopback."""
    args = argv[1:]
    kept: list[str] = []
    skip = False
    replaced = ("-p", "--processes", "-n", "--name", "--metrics-port", "--metrics-host")
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in replaced:
            skip = i + 1 < len(args)
            continue
        if arg.startswith(tuple(f"{option}=" for option in replaced if option[1] == "-")) or (
            arg.startswith(("-p", "-n")) and len(arg) > 2 and not arg.startswith("--")
        ):
            continue
        kept.append(arg)
    own = ["--metrics-port", "0", "--metrics-host", "127.0.0.1"] if probes else []
    return [sys.executable, "-m", "streamtasks", *kept, *own, "-p", "1", "-n", name]


def _die_with_parent() -> None:
    """In the child before exec: on Linux, get SIGTERM when the supervisor dies, so no worker
    outlives it and runs on under a name a new supervisor would give its own children."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(
    argv: list[str], processes: int, name: str | None, probes: tuple[str, int] | None = None
) -> int:
    """Run `processes` children until SIGTERM/SIGINT, forward it, and return 0 when all exit.
    With `probes` (host, port), serve there the children's metrics added up, and probes that
    pass when every child's do."""
    base = name or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
    # Children keep the same name when restarted, so each first re-runs what its predecessor held.
    names = [f"{base}-{i}" for i in range(1, processes + 1)]
    children: dict[str, subprocess.Popen[bytes]] = {}
    delays = dict.fromkeys(names, 0.5)
    started: dict[str, float] = {}
    stopping = threading.Event()
    signals = Signals()
    exit_code = 0

    ports = Path(tempfile.mkdtemp(prefix="streamtasks-probes-"))

    def start(child: str) -> None:
        env = {**os.environ, SUPERVISED_ENV: "1", PORT_FILE_ENV: str(ports / child)}
        (ports / child).unlink(missing_ok=True)  # a new child writes its own
        children[child] = subprocess.Popen(
            _child_argv(argv, child, probes is not None), env=env, preexec_fn=_die_with_parent
        )
        started[child] = time.monotonic()

    def child_ports() -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        for child in names:
            try:
                port = int((ports / child).read_text())
            except (OSError, ValueError):
                port = None  # starting, or never got that far
            found[child] = None if port in found.values() else port
        return found

    if probes is not None:
        from streamtasks.metrics import Gathered, children_health, serve

        host, port = probes
        gathered = Gathered()
        try:
            serve(
                lambda: gathered.text({c: p for c, p in child_ports().items() if p is not None}),
                lambda: children_health(child_ports(), "/healthz"),
                lambda: children_health(child_ports(), "/readyz") is None,
                port,
                host,
            )
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", host, port, exc)
            return USAGE_ERROR
        log.info("metrics and probes of %d workers on http://%s:%d/metrics", processes, host, port)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Children take orders from here only: the first signal asks them to finish what runs,
        # another one here a second or more later kills them; a repeat they receive themselves
        # changes nothing.
        heard = signals.heard()
        if heard == Signals.REPEAT:
            return
        escalate = heard == Signals.AGAIN
        stopping.set()
        if escalate:
            log.warning("killing the workers now: unfinished tasks stay pending for other workers")
        else:
            log.warning(
                "stopping %d worker processes: they finish their running tasks; signal again "
                "to kill them now",
                len(children),
            )
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL if escalate else signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for child in names:
        start(child)
    log.info("supervising %d worker processes: %s", processes, ", ".join(names))
    while not stopping.is_set():
        for child, proc in list(children.items()):
            code = proc.poll()
            if code is None or stopping.is_set():
                continue
            # Its port is free for anyone now: not asked again until its successor writes one.
            (ports / child).unlink(missing_ok=True)
            if code == USAGE_ERROR:
                # Restarting cannot fix a bad command line or app: stop them all and say so.
                log.error("worker %s refused its arguments; stopping", child)
                on_signal(signal.SIGTERM, None)
                exit_code = USAGE_ERROR
                break
            if code == REPLACE_ME:
                log.warning(
                    "worker %s left a task's thread stuck past its time limit; a new process "
                    "takes its place",
                    child,
                )
                start(child)
                continue
            lived = time.monotonic() - started[child]
            delays[child] = (
                0.5 if lived > _HEALTHY_AFTER else min(_RESTART_DELAY_MAX, delays[child] * 2)
            )
            log.warning(
                "worker %s exited with %s after %.1fs; restarting in %.1fs",
                child,
                code,
                lived,
                delays[child],
            )
            if stopping.wait(delays[child]):
                break
            start(child)
        stopping.wait(0.2)  # os.wait() would race the signal handler; a short tick is simpler
    for proc in children.values():
        proc.wait()
    shutil.rmtree(ports, ignore_errors=True)
    return exit_code
