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


def node() -> str:
    """What tells this machine and process namespace apart from others that share its host
    name (containers with the host's network, clones of one VM): a pid means the same process
    only within one node. The host name, the boot id and the pid namespace, where Linux says."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            parts.append(boot.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass  # not Linux: the host name alone
    return "/".join(parts)


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
        #: This process's token, set by `claim`: a record with another one is another worker's.
        self.instance = ""
        self._fixed = {
            "name": name,
            "host": socket.gethostname(),
            "version": streamtasks.__version__,
            "queues": ",".join(queues),
            "concurrency": str(concurrency),
            "async_concurrency": str(async_concurrency),
        }

    def claim(self, counts: Mapping[str, int], stop: threading.Event, wait: float = TTL) -> bool:
        """Take the name: True once taken, False if `stop` was set first; NameTaken if a live
        worker holds it. A holder in this same node is known alive or dead by its pid: a dead
        one (killed, or an earlier life of this container's pid) is taken over at once, a live
        one refuses the name at once. A holder elsewhere is given `wait` seconds to lapse, in
        case it has just died."""
        # Here, not when built: a process forked since has a pid and a token of its own.
        self.instance, pid, here = os.urandom(8).hex(), os.getpid(), node()
        self._fixed.update(pid=str(pid), node=here, started=str(int(self.clock() * 1000)))
        deadline = time.monotonic() + wait
        while True:
            holder = self._write("start", counts)
            if holder is not None and holder.get("node") == here:
                if _alive(holder, pid, (self.app.name, self.name)):
                    raise NameTaken(_taken(self.name, holder, self.clock()))
                # Taken over only from that very holder: two starting namesakes cannot both.
                holder = self._write("take", counts, expected=holder.get("instance", ""))
            if holder is None:
                with _held_lock:
                    _held_here.add((self.app.name, self.name))
                return True
            if time.monotonic() >= deadline:
                raise NameTaken(_taken(self.name, holder, self.clock()))
            if stop.wait(min(0.5, TTL / 4)):
                return False

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

    def _write(
        self, mode: str, counts: Mapping[str, int], expected: str = ""
    ) -> dict[str, str] | None:
        record = {**self._fixed, **{k: str(v) for k, v in counts.items()}}
        return self.app.broker.register(
            self.keys,
            self.name,
            mode,
            self.instance,
            now_ms=self._now_ms(),
            ttl_ms=int(TTL * 1000),
            record=record,
            expected=expected,
        )

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)


def _alive(holder: Mapping[str, str], pid: int, name: tuple[str, str]) -> bool:
    """Whether the holder, a process of this same node, still runs."""
    try:
        theirs = int(holder.get("pid", ""))
    except ValueError:
        return True  # cannot tell: not taken from it
    if theirs == pid:
        # This very process id: an earlier life of this container, unless a worker of this
        # process holds the name.
        with _held_lock:
            return name in _held_here
    try:
        os.kill(theirs, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _taken(name: str, holder: Mapping[str, str], now: float) -> str:
    seen = holder.get("last_seen", "")
    ago = f"{now - int(seen) / 1000:.1f}s ago" if seen.isdigit() else "recently"
    return (
        f"worker name {name!r} is held by a live worker (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, last seen {ago}); two workers under one name would run "
        "each other's tasks twice: give this one another -n, or stop that one"
    )
