"""Dead-letter streams: list, inspect, replay and purge the messages a queue gave up on."""

from __future__ import annotations

import builtins
import datetime as dt
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamtasks.codec import Codec
from streamtasks.errors import ConfigurationError, DecodeError
from streamtasks.message import BUILT_IN
from streamtasks.protocol import DEAD_LETTER_FIELDS, REPLAY_FIELDS

if TYPE_CHECKING:
    from streamtasks.app import App


log = logging.getLogger(__name__)

_ENTRY_ID = re.compile(r"([0-9]+)-([0-9]+)")
_DIGITS = re.compile(r"[0-9]+")
_REPLAY_SLICE = 500
# The fields `DeadLetter.as_dict` names itself; any other is kept as text under "fields".
_VIEWED = frozenset(
    {"id", "task", "call", "attempt", "idempotency_key", *DEAD_LETTER_FIELDS, *REPLAY_FIELDS}
)


def _is_entry_id(value: str) -> bool:
    # Both halves are 64-bit in Redis: a larger one is refused here, not by Redis mid-request.
    found = _ENTRY_ID.fullmatch(value)
    return found is not None and all(int(part) < 2**64 for part in found.groups())


def _checked(ids: list[str]) -> list[str]:
    """Refuse the whole request before touching anything if any id is not a stream entry id."""
    bad = [i for i in ids if not _is_entry_id(i)]
    if bad:
        what = "not a stream entry id" if len(bad) == 1 else "not stream entry ids"
        raise ConfigurationError(f"{what} (like 1732270000000-0): {', '.join(bad)}")
    return ids


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return repr(value)


def _int(text: str) -> int | None:
    return int(text) if _DIGITS.fullmatch(text) else None


def _time(ms_text: str) -> dt.datetime | None:
    """A Unix time in ms, as the dead-letter fields store it; None if it is not one."""
    ms = _int(ms_text)
    try:
        return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def jsonable(value: Any) -> Any:
    """`value` with everything JSON cannot carry made readable: times in ISO 8601, sets as
    lists, map keys as text, bytes (and objects with no str of their own) as their repr, other
    objects (Decimal, UUID, timedelta) as their str."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else repr(k): jsonable(v) for k, v in value.items()}
    if type(value) in (list, tuple):  # not a named tuple: its repr names its parts
        return [jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return [jsonable(v) for v in sorted(value, key=repr)]
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if (
        isinstance(value, bytes | bytearray)
        or getattr(type(value), "__str__", None) is object.__str__
    ):
        return repr(value)
    return str(value)


def _call(raw: bytes, codec: Codec) -> dict[str, Any]:
    try:
        call = codec.unpack(raw)
    except DecodeError as exc:  # garbage is exactly what a DLQ holds
        return {"undecodable": str(exc)}
    if not isinstance(call, dict):
        return {"undecodable": f"a msgpack {type(call).__name__}, not a map"}
    decoded: dict[str, Any] = jsonable(call)
    return decoded


@dataclass(frozen=True)
class DeadLetter:
    """One entry of a dead-letter stream: the original fields plus why it failed."""

    id: str
    fields: dict[bytes, bytes]
    queue: str
    #: Decodes `call`: the app's, so the types it registered read back as themselves.
    codec: Codec = field(default=BUILT_IN, repr=False, compare=False)

    def get(self, name: str) -> str:
        raw = self.fields.get(name.encode())
        return "" if raw is None else _text(raw)

    def _optional(self, name: str) -> str | None:
        raw = self.fields.get(name.encode())
        return None if raw is None else _text(raw)

    @property
    def task(self) -> str:
        return self.get("task") or "?"

    @property
    def reason(self) -> str:
        return f"{self.get('error_type')}: {self.get('error')}"

    @property
    def attempts(self) -> int | None:
        """How many runs were made (the first run is attempt 1); None in a garbage entry."""
        return _int(self.get("attempts"))

    @property
    def failed_at(self) -> dt.datetime | None:
        """When the message was given up on (UTC); None in a garbage entry."""
        return _time(self.get("failed_at"))

    def as_dict(self) -> dict[str, Any]:
        """The JSON view of the entry, every value a JSON type.

        `id` is the dead-letter entry's own id, `task_id` the task's; counts are ints and times
        ISO 8601 in UTC; `call` is the decoded args/kwargs/headers (`{"undecodable": why}` when
        it is garbage). Fields it does not name (a garbage entry's, say) are kept as text under
        `fields`, as is a count or time that does not parse, whose own key is then null. The
        wire field `attempt` (which run the message was on) is left out: `attempts` says it.
        """
        others = {_text(k): _text(v) for k, v in self.fields.items() if _text(k) not in _VIEWED}

        def parsed(name: str, parse: Callable[[str], Any]) -> Any:
            text = self._optional(name)
            value = None if text is None else parse(text)
            if value is None and text is not None:
                others[name] = text  # kept, not lost, when it does not parse
            return value

        raw_call = self.fields.get(b"call")
        view: dict[str, Any] = {
            "id": self.id,
            "queue": self.queue,
            "task": self._optional("task"),
            "task_id": self._optional("id"),
            "attempts": parsed("attempts", _int),
            "error_type": self._optional("error_type"),
            "error": self._optional("error"),
            "traceback": self._optional("traceback"),
            "failed_at": parsed("failed_at", _iso),
            "worker": self._optional("worker"),
            "origin_stream": self._optional("origin_stream"),
            "origin_id": self._optional("origin_id"),
            "idempotency_key": self._optional("idempotency_key"),
            "call": None if raw_call is None else _call(raw_call, self.codec),
        }
        if b"deliveries" in self.fields:  # a worker died on each delivery of the last attempt
            view["deliveries"] = parsed("deliveries", _int)
        if b"replayed_from" in self.fields:
            view["replayed_from"] = self._optional("replayed_from")
        if b"replayed_at" in self.fields:
            view["replayed_at"] = parsed("replayed_at", _iso)
        view["fields"] = others
        return view


def _iso(ms_text: str) -> str | None:
    when = _time(ms_text)
    return None if when is None else when.isoformat(timespec="milliseconds")


class DeadLetters:
    """The dead-letter stream of one queue."""

    def __init__(self, app: App, queue: str):
        self.app = app
        self.queue = app.check_queue(queue)
        self.keys = app.keys(self.queue)

    def list(self, limit: int | None = None) -> builtins.list[DeadLetter]:
        entries = self.app.broker.dead_entries(self.keys, count=limit)
        return [DeadLetter(i, f, self.queue, self.app.codec) for i, f in entries]

    def get(self, entry_id: str) -> DeadLetter | None:
        """The entry with this id, None if there is none; ConfigurationError if it is no id."""
        _checked([entry_id])
        found = self.app.broker.dead_entries(self.keys, start=entry_id, count=1)
        if not found or found[0][0] != entry_id:
            return None
        return DeadLetter(found[0][0], found[0][1], self.queue, self.app.codec)

    def replay(self, ids: builtins.list[str] | None = None) -> builtins.list[str]:
        """Re-enqueue entries (all when `ids` is None), attempts reset; returns the ids moved. A
        keyed entry takes its idempotency key back; one whose key names another task by now is
        left in place, with a warning: running it could repeat that task's work."""
        ids = [d.id for d in self.list()] if ids is None else _checked(ids)
        done: builtins.list[str] = []
        ttl_ms = int(self.app.idempotency_ttl * 1000)
        # In slices: one script call holds Redis, so a huge dead-letter stream goes bit by bit.
        for start in range(0, len(ids), _REPLAY_SLICE):
            now_ms = int(self.app.clock() * 1000)
            chunk = ids[start : start + _REPLAY_SLICE]
            moved, left = self.app.broker.replay(self.keys, chunk, now_ms, ttl_ms)
            done += moved
            for entry_id in left:
                log.warning(
                    "dead letter %s of %s not replayed: its idempotency key names another task "
                    "now (release the key, or purge the dead letter)",
                    entry_id,
                    self.queue,
                    extra={"queue": self.queue, "entry_id": entry_id},
                )
        return done

    def purge(self, ids: builtins.list[str] | None = None) -> int:
        """Delete entries (all when `ids` is None); returns how many were deleted."""
        return self.app.broker.purge(self.keys, None if ids is None else _checked(ids))

    def __len__(self) -> int:
        return self.app.broker.dead_count(self.keys)


def locate(streams: Iterable[DeadLetters], ids: Iterable[str]) -> dict[str, builtins.list[str]]:
    """For each id, the queues whose dead-letter stream holds it (none, one, or several).

    Every id is checked to be an entry id first, so a typo refuses the request before anything
    is read. Entry ids are unique within a stream only: two queues may hold the same one.
    """
    wanted = _checked(builtins.list(dict.fromkeys(ids)))
    found: dict[str, builtins.list[str]] = {i: [] for i in wanted}
    for stream in streams:
        for entry_id in wanted:
            if stream.get(entry_id) is not None:
                found[entry_id].append(stream.queue)
    return found
