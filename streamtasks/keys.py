"""Every Redis key and consumer-group name streamtasks uses, built in one place.

A queue's keys all carry the hash tag ``{queue}``, so each atomic step (one Lua script, which
only ever touches the keys of one queue) lands on a single Redis Cluster slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from streamtasks.errors import ConfigurationError

#: The consumer group every worker of every queue joins.
GROUP = "streamtasks"

_NAME = re.compile(r"[A-Za-z0-9_.\-:]+")


def check_name(kind: str, name: str) -> str:
    """Reject names that would break a hash tag or a key (braces, spaces, empty)."""
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"invalid {kind} name {name!r}: use letters, digits and _ . - : only"
        )
    return name


@dataclass(frozen=True)
class QueueKeys:
    """The keys of one queue of one app (names are built once: they are read for every task)."""

    app: str
    queue: str

    @cached_property
    def _base(self) -> str:
        return f"{self.app}:{{{self.queue}}}"

    @cached_property
    def stream(self) -> str:
        return f"{self._base}:stream"

    @cached_property
    def dead(self) -> str:
        return f"{self._base}:dlq"

    @cached_property
    def delayed(self) -> str:
        return f"{self._base}:delayed"

    @cached_property
    def wake(self) -> str:
        """A one-entry stream announcing a delayed message due sooner than any before it."""
        return f"{self._base}:wake"

    @cached_property
    def revoked(self) -> str:
        """Sorted set of revoked task ids, each scored by when it is forgotten (Unix ms)."""
        return f"{self._base}:revoked"

    @cached_property
    def result_prefix(self) -> str:
        """What a task id is appended to for its result key (the Lua scripts build them so)."""
        return f"{self._base}:result:"

    def result(self, task_id: str) -> str:
        return self.result_prefix + task_id

    def progress(self, task_id: str) -> str:
        """The latest progress a running task reported (a string, kept as long as its result)."""
        return f"{self._base}:progress:{task_id}"

    @cached_property
    def idempotency_prefix(self) -> str:
        """What an idempotency key is appended to for its record (reclaim.lua builds them so)."""
        return f"{self._base}:idem:"

    def idempotency(self, key: str) -> str:
        return self.idempotency_prefix + key

    @cached_property
    def figures(self) -> str:
        """Who measures the queue for the metrics now: a short lease one worker holds."""
        return f"{self._base}:figures"

    def done(self, minute: int) -> str:
        """How many runs of the queue ended in minute `minute` (Unix time // 60), kept 10 min."""
        return f"{self._base}:done:{minute}"


@dataclass(frozen=True)
class WorkerKeys:
    """The registry of an app's live workers: a hash per worker, kept alive by its heartbeat,
    and an index of their names. They share the hash tag ``{app:workers}``: one cluster slot for
    the app's registry, apart from its queues."""

    app: str

    @cached_property
    def _base(self) -> str:
        return f"{self.app}:{{{self.app}:workers}}"

    @cached_property
    def index(self) -> str:
        """Sorted set of worker names, each scored by when its record lapses (Unix ms)."""
        return f"{self._base}:index"

    def worker(self, name: str) -> str:
        return f"{self._base}:w:{name}"
