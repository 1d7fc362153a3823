"""A worker's record in the app's registry: who it is, what it serves, how it is doing.

The record lives while its worker beats (every `BEAT` seconds; it expires `TTL` seconds after the
last beat), so `streamtasks status` lists live workers only. A name held by a live worker is
refused to another: two workers under one name would take each other's entries and run them
twice. A worker that stops cleanly removes its record.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import streamtasks
from streamtasks.errors import ConfigurationError
from streamtasks.keys import WorkerKeys

if TYPE_CHECKING:
    from streamtasks.app import App

#: Seconds between two beats of a worker, and how long its record outlives the last one.
BEAT = 2.0
TTL = 10.0
#: How often the app's queues are measured for the metrics, by one worker at a time.
FIGURES_EVERY = 5.0

# Names held by workers of this process: its pid in another worker's record means a namesake
# here, not an earlier life of this container.
_held_here: set[tuple[str, str]] = set()
_held_lock = threading.Lock()


class NameTaken(ConfigurationError):
    """Another live worker holds this worker's name."""


class Registration:
    """The record of worker `name` of `app`, which serves `queues`."""

    def __init__(
        self,
        app: App,
        name: str,
        *,
        queues: list[str],
        concurrency: int,
        async_concurrency: int,
        clock: Callable[[], float] = time.time,
    ):
        self.app = app
        self.name = name
        self.keys = WorkerKeys(app.name)
        self.clock = clock
        #: This process's token: a record with another one is another worker's.
        self.instance = os.urandom(8).hex()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._fixed = {
            "name": name,
            "host": self.host,
            "pid": str(self.pid),
            "version": streamtasks.__version__,
            "queues": ",".join(queues),
            "concurrency": str(concurrency),
            "async_concurrency": str(async_concurrency),
        }

    def claim(self, counts: Mapping[str, int], stop: threading.Event, wait: float = TTL) -> None:
        """Take the name; NameTaken if a live worker holds it. A holder on this host whose
        process is gone (killed, or this same pid in a restarted container) is taken over at
        once; any other is given `wait` seconds to lapse, in case it has just died."""
        self._fixed["started"] = str(int(self.clock() * 1000))
        deadline = time.monotonic() + wait
        while True:
            holder = self._write("start", counts)
            if holder is None or self._dead_here(holder):
                if holder is not None:
                    self._write("take", counts)
                with _held_lock:
                    _held_here.add((self.app.name, self.name))
                return
            if time.monotonic() >= deadline or stop.wait(min(0.5, TTL / 4)):
                raise NameTaken(_taken(self.name, holder, self.clock()))

    def beat(self, counts: Mapping[str, int]) -> None:
        """Refresh the record; NameTaken if another worker took the name meanwhile (this one
        stopped beating for longer than TTL, paused or cut off)."""
        holder = self._write("beat", counts)
        if holder is not None:
            raise NameTaken(
                f"{_taken(self.name, holder, self.clock())}: this worker stopped beating for "
                f"over {TTL:g}s, and the name was given to another; stopping"
            )

    def release(self) -> None:
        """Remove the record (only this worker's own)."""
        with _held_lock:
            _held_here.discard((self.app.name, self.name))
        self.app.broker.register(
            self.keys, self.name, "stop", self.instance, now_ms=self._now_ms(), ttl_ms=0
        )

    def _write(self, mode: str, counts: Mapping[str, int]) -> dict[str, str] | None:
        record = {**self._fixed, **{k: str(v) for k, v in counts.items()}}
        return self.app.broker.register(
            self.keys,
            self.name,
            mode,
            self.instance,
            now_ms=self._now_ms(),
            ttl_ms=int(TTL * 1000),
            record=record,
        )

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _dead_here(self, holder: Mapping[str, str]) -> bool:
        if holder.get("host") != self.host:
            return False
        try:
            pid = int(holder.get("pid", ""))
        except ValueError:
            return False
        if pid == self.pid:
            # This very process id: an earlier life of this container, unless a worker of this
            # process holds the name.
            with _held_lock:
                return (self.app.name, self.name) not in _held_here
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False


def _taken(name: str, holder: Mapping[str, str], now: float) -> str:
    seen = holder.get("last_seen", "")
    ago = f"{now - int(seen) / 1000:.1f}s ago" if seen.isdigit() else "recently"
    return (
        f"worker name {name!r} is held by a live worker (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, last seen {ago}); two workers under one name would run "
        "each other's tasks twice: give this one another -n, or stop that one"
    )
