"""What Python and the Lua scripts say to each other, named once: the actions a settle record asks
settle.lua for and the codes it answers, the codes enqueue.lua answers, and the fields a dead
letter adds to its entry (written by the settler and by reclaim.lua, dropped by replay.lua).

The scripts cannot import this module; tests/unit/test_protocol.py reads them and checks that they
use these names and no others.
"""

from __future__ import annotations

from typing import NamedTuple


class Action:
    """What settle.lua does with one finished run's entry."""

    #: Ack and delete the entry; the record's status says how the run ended: a SUCCESS marks its
    #: idempotency key done, a FAILURE or REVOKED frees it.
    ACK = "a"
    #: Ack and delete, and schedule the record's new entry (the next attempt) for later.
    RETRY = "r"
    #: Ack and delete, copy the entry to the dead-letter stream; frees the idempotency key.
    DEAD_LETTER = "d"
    #: acks_late=False: ack and delete before the run; the worker keeps the fields.
    ACK_ON_RECEIPT = "e"

    @staticmethod
    def after_receipt(action: str) -> str:
        """The action for an entry acked on receipt: neither fenced nor acked again."""
        return action.upper()


#: What settle.lua answers for each record: not applied (another consumer owns the entry now, or
#: the same entry came earlier in the batch); applied; a success whose entry is gone from Redis
#: (its result and key were recorded, there was nothing to ack).
REFUSED, SETTLED, GONE = 0, 1, 2

#: What enqueue.lua answers: not added, the key names this same call; added; not added, the key
#: names another call.
DUPLICATE, ENQUEUED, CONFLICT = 0, 1, 2


class SettleRecord(NamedTuple):
    """One finished run to apply: see settle.lua for the meaning of each slot."""

    entry_id: str
    action: str
    result_key: str | None = None
    result_ttl_ms: int = 0
    status: str = ""
    data: bytes = b""
    idempotency_key: str | None = None
    extra: bytes | str = b""
    task_id: str = ""

    @property
    def is_plain_ack(self) -> bool:
        """An ack with nothing else to write, sent as a bare id."""
        nothing_else = self.result_key is None and self.idempotency_key is None
        return self.action == Action.ACK and nothing_else


#: The fields a dead letter adds after its entry's own, in this order. `deliveries` is there
#: only when reclaim buried it (a worker died on each delivery).
DEAD_LETTER_FIELDS = (
    "error_type",
    "error",
    "traceback",
    "attempts",
    "deliveries",
    "worker",
    "failed_at",
    "origin_stream",
    "origin_id",
)
#: The fields a replayed entry carries: which dead letter it was, and when it was replayed.
REPLAY_FIELDS = ("replayed_from", "replayed_at")


def dead_letter_fields(
    *,
    error_type: str,
    error: str,
    traceback: str,
    attempts: int,
    worker: str,
    failed_at_ms: int,
    origin_stream: str,
    origin_id: str,
) -> list[str]:
    """The fields a dead letter the settler writes adds to its entry's."""
    values = {
        "error_type": error_type,
        "error": error,
        "traceback": traceback,
        "attempts": str(attempts),
        "worker": worker,
        "failed_at": str(failed_at_ms),
        "origin_stream": origin_stream,
        "origin_id": origin_id,
    }
    return [part for name in DEAD_LETTER_FIELDS if name in values for part in (name, values[name])]
