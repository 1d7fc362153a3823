"""The settler: the thread of a worker run that applies finished runs to Redis, many per round
trip, each atomically and only if this worker still owns its entry (settle.lua; protocol.py
names its actions and codes)."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from streamtasks import retrying
from streamtasks.errors import BrokerUnavailable
from streamtasks.keys import QueueKeys
from streamtasks.outcome import Delivery, Settle
from streamtasks.protocol import GONE, REFUSED

if TYPE_CHECKING:
    import threading

    from streamtasks.app import App

log = logging.getLogger(__name__)

_BATCH = 500
# While entries wait to run, the settler lingers this long before a round trip, so that runs
# finishing close together share one: a settle costs about what a task making one Redis call does.
_LINGER = 0.002
_STOP: Any = object()
# How a run's status counts in the worker's record (streamtasks status): a dead letter failed too.
_COUNTED = {
    "SUCCESS": "done",
    "FAILURE": "failed",
    "DEAD": "failed",
    "RETRY": "retried",
    "REVOKED": "revoked",
}


class Settler:
    """Applies what `put` is given, in the order given, until `close`. `settled` hears of each
    record once it is applied or refused; `busy` says whether runs are about to finish (then a
    round trip waits a moment for them)."""

    def __init__(
        self,
        app: App,
        worker: str,
        outage: retrying.Outage,
        *,
        settled: Callable[[list[Delivery]], None],
        busy: Callable[[], bool],
        abort: threading.Event,
        observe: Callable[[Settle, int], None] | None = None,
    ):
        self.app = app
        self.worker = worker
        self.outage = outage
        self._settled = settled
        self._busy = busy
        self._abort = abort
        self._observe = observe
        self._records: queue.SimpleQueue[Settle] = queue.SimpleQueue()
        #: Runs applied so far, by how they ended (written by the settler's thread only).
        self.counts = dict.fromkeys(_COUNTED.values(), 0)

    def put(self, settle: Settle) -> None:
        """Apply this record soon. A finished run is handed over at once, never held back for a
        batch: until it is settled it has no result, no ack and no idempotency mark."""
        self._records.put(settle)

    def close(self) -> None:
        """Apply what was put so far, then let `run` return."""
        self._records.put(_STOP)

    def run(self) -> None:
        while True:
            first = self._records.get()
            if first is _STOP:
                return
            if self._busy():
                time.sleep(_LINGER)
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    more = self._records.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._apply(batch)
                    return
                batch.append(more)
            self._apply(batch)

    def _apply(self, batch: list[Settle]) -> None:
        groups: dict[str, tuple[QueueKeys, list[Settle]]] = {}
        for s in batch:
            s.delivery.settling = True
            groups.setdefault(s.delivery.keys.stream, (s.delivery.keys, []))[1].append(s)
        for keys, group in groups.values():
            try:
                records, minute = [s.record for s in group], int(self.app.clock() // 60)
                codes = retrying.call(
                    partial(self.app.broker.settle, keys, self.worker, records, minute=minute),
                    self.outage,
                    stop=self._abort,  # past the shutdown deadline: left pending, redelivered
                )
            except BrokerUnavailable:
                return
            for s, code in zip(group, codes, strict=True):
                if code in (REFUSED, GONE):
                    _report(s, code)
                counted = _COUNTED.get(s.status) if code != REFUSED else None
                if counted is not None:
                    self.counts[counted] += 1
                if self._observe is not None:
                    self._observe(s, code)
            self._settled([s.delivery for s in group])


def _report(s: Settle, code: int) -> None:
    d = s.delivery
    if code == REFUSED:
        log.warning(
            "%s[%s] finished as %s but another worker took it over meanwhile; its outcome was "
            "not applied",
            d.task_name,
            d.task_id,
            s.status,
            extra={"task_id": d.task_id},
        )
    else:
        log.warning(
            "%s[%s] finished as %s but its entry is gone (Redis lost it, or another worker "
            "finished it); the result was recorded, there was nothing to ack",
            d.task_name,
            d.task_id,
            s.status,
            extra={"task_id": d.task_id},
        )
