"""From a fetched entry and the outcome of its run to the settle record that applies it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from streamtasks.codec import Codec
from streamtasks.errors import DecodeError, EncodeError
from streamtasks.keys import QueueKeys
from streamtasks.message import SCHEMA_VERSION, Message, decode, flatten, netstring, pack
from streamtasks.policy import (
    DeadLetter,
    ErrorInfo,
    Failed,
    Outcome,
    RetryLater,
    Revoked,
    Succeeded,
)
from streamtasks.protocol import Action, SettleRecord, dead_letter_fields

if TYPE_CHECKING:
    from streamtasks.task import Task, TaskOptions


# How many of the worker's task names an UnknownTask dead letter lists.
_LISTED = 20


@dataclass(eq=False, slots=True)
class Delivery:
    """An entry this worker holds, from fetch until its outcome is settled."""

    keys: QueueKeys
    entry_id: str
    fields: dict[bytes, bytes]
    message: Message | None
    task: Task[Any, Any] | None
    problem: ErrorInfo | None
    options: TaskOptions | None = None
    started: bool = False
    finished: bool = False  # the run ended; its outcome waits for the settler
    settling: bool = False  # the settler has taken the outcome
    acked_early: bool = False  # acks_late=False: acked before the run started
    started_at: float = 0.0  # the wall-clock time its run began (for the metrics' wait time)
    took: float = 0.0  # how long its task ran, in seconds
    revoked: bool = False  # revoked while it runs
    given_up: bool = False  # past its time limit: decided without waiting for the run to end
    #: Stops the run when it is revoked as it runs, where it can be (see limits.py).
    interrupt: Callable[[], object] | None = None

    @classmethod
    def parse(
        cls,
        keys: QueueKeys,
        entry_id: str,
        fields: dict[bytes, bytes],
        tasks: Mapping[str, Task[Any, Any]],
        codec: Codec,
    ) -> Delivery:
        try:
            message = decode(fields, codec)
        except DecodeError as exc:
            problem = ErrorInfo("DecodeError", str(exc), "")
            return cls(keys, entry_id, fields, _named(fields), None, problem)
        task = tasks.get(message.task)
        if task is None:
            problem = ErrorInfo("UnknownTask", _unknown(message.task, tasks), "")
            return cls(keys, entry_id, fields, message, None, problem)
        return cls(keys, entry_id, fields, message, task, None, task.options)

    @property
    def is_async(self) -> bool:
        return self.task is not None and self.task.is_async

    @property
    def task_id(self) -> str:
        return self.message.id if self.message else self.entry_id

    @property
    def task_name(self) -> str:
        return self.message.task if self.message else "?"

    @property
    def attempt(self) -> int:
        """Which run of the task this is, the first being 1."""
        return self.message.attempt if self.message else 1


def _named(fields: Mapping[bytes, bytes]) -> Message | None:
    """What can be read of an entry that cannot be run: its task id, name and idempotency key,
    where they are text, so its producer still gets a DEAD result, the log names the task and the
    key is freed."""
    try:
        message = Message(fields[b"id"].decode(), fields[b"task"].decode())
    except (KeyError, UnicodeDecodeError):
        return None
    # Its key too, so that the dead letter frees it as any other does.
    try:
        return message._replace(idempotency_key=fields[b"idempotency_key"].decode())
    except (KeyError, UnicodeDecodeError):
        return message


def _unknown(name: str, tasks: Mapping[str, Task[Any, Any]]) -> str:
    known = sorted(tasks)
    listed = ", ".join(known[:_LISTED]) + (
        f" and {len(known) - _LISTED} more" if len(known) > _LISTED else ""
    )
    return (
        f"no task named {name!r} is registered in this worker; it knows "
        f"{listed or 'no tasks at all'} (is the producer's app the one the worker imports?)"
    )


class Settle(NamedTuple):
    """A record for the settler, which ends the delivery; `status` and `outcome` say how the run
    ended (no outcome: nothing ran)."""

    delivery: Delivery
    record: SettleRecord
    status: str
    outcome: Outcome | None = None

    @property
    def error(self) -> ErrorInfo | None:
        """What went wrong, for an outcome other than a success."""
        return None if self.outcome is None else getattr(self.outcome, "error", None)


def _result_key(d: Delivery) -> str | None:
    # An unregistered task still gets a DEAD result, so a producer waiting on it learns why.
    if d.message is None or (d.options is not None and d.options.ignore_result):
        return None
    return d.keys.result(d.message.id)


def _dead_fields(d: Delivery, error: ErrorInfo, worker: str, now: float) -> bytes:
    """The dead-letter entry: the original fields as they were, then why it failed."""
    added = dead_letter_fields(
        error_type=error.type_name,
        error=error.message,
        traceback=error.traceback,
        attempts=d.attempt,
        worker=worker,
        failed_at_ms=int(now * 1000),
        origin_stream=d.keys.stream,
        origin_id=d.entry_id,
    )
    return netstring([*flatten(d.fields), *added])


def record_for(
    d: Delivery,
    outcome: Outcome,
    *,
    codec: Codec,
    worker: str,
    now: float,
    result_ttl: float,
    idempotency_ttl: float,
) -> Settle:
    """The settle record that applies `outcome` to the entry behind `d`."""
    options = d.options
    if (
        options is not None
        and options.ignore_result
        and options.acks_late
        and isinstance(outcome, Succeeded)
        and d.message is not None
        and d.message.idempotency_key is None
    ):
        return Settle(d, SettleRecord(d.entry_id, Action.ACK), "SUCCESS", outcome)  # a plain ack
    rkey = _result_key(d)
    ttl_ms = int(result_ttl * 1000)
    key = d.message.idempotency_key if d.message else None
    ikey = None if key is None else d.keys.idempotency(key)
    if isinstance(outcome, Succeeded):
        try:
            data = codec.pack(outcome.value, root="the result") if rkey is not None else b""
        except EncodeError as exc:
            outcome = Failed(ErrorInfo.of(exc))
        else:
            ikey_ttl = str(int(idempotency_ttl * 1000))
            record = SettleRecord(
                d.entry_id, Action.ACK, rkey, ttl_ms, "SUCCESS", data, ikey, ikey_ttl, d.task_id
            )
            return _late(d, record, "SUCCESS", outcome)
    if isinstance(outcome, Revoked):
        data = pack(ErrorInfo("TaskRevoked", outcome.reason, "").as_dict())
        record = SettleRecord(
            d.entry_id, Action.ACK, rkey, ttl_ms, "REVOKED", data, ikey, "", d.task_id
        )
        return _late(d, record, "REVOKED", outcome)
    if isinstance(outcome, Failed):
        data = pack(outcome.error.as_dict())
        record = SettleRecord(
            d.entry_id, Action.ACK, rkey, ttl_ms, "FAILURE", data, ikey, "", d.task_id
        )
        return _late(d, record, "FAILURE", outcome)
    if isinstance(outcome, RetryLater):
        due_ms = int((now + outcome.delay) * 1000)
        fields = dict(d.fields)
        fields[b"schema_version"] = SCHEMA_VERSION.encode()  # a version 1 entry counted from 0
        fields[b"attempt"] = str(d.attempt + 1).encode()
        extra = b"%d:" % due_ms + netstring(flatten(fields))
        data = pack({**outcome.error.as_dict(), "due_ms": due_ms, "attempt": d.attempt})
        record = SettleRecord(d.entry_id, Action.RETRY, rkey, ttl_ms, "RETRY", data, None, extra)
        return _late(d, record, "RETRY", outcome)
    assert isinstance(outcome, DeadLetter)
    data = pack(outcome.error.as_dict())
    extra = _dead_fields(d, outcome.error, worker, now)
    record = SettleRecord(
        d.entry_id, Action.DEAD_LETTER, rkey, ttl_ms, "DEAD", data, ikey, extra, d.task_id
    )
    return _late(d, record, "DEAD", outcome)


def _late(d: Delivery, record: SettleRecord, status: str, outcome: Outcome) -> Settle:
    """For a task acked on receipt, the final record must neither fence nor ack again (one
    revoked or expired before its run never was acked, and is settled as any other)."""
    if d.acked_early:
        record = record._replace(action=Action.after_receipt(record.action))
    return Settle(d, record, status, outcome)


def skipped(d: Delivery) -> Settle:
    """A redelivered entry whose idempotency key is already done: ack it without running."""
    return Settle(d, SettleRecord(d.entry_id, Action.ACK), "SKIPPED")


def early_ack(d: Delivery) -> SettleRecord:
    """acks_late=False: the ack made before the task runs."""
    return SettleRecord(d.entry_id, Action.ACK_ON_RECEIPT)
