"""Dead-letter streams: list, inspect, replay and purge the messages a queue gave up on."""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamtasks.errors import ConfigurationError, DecodeError
from streamtasks.message import unpack

if TYPE_CHECKING:
    from streamtasks.app import App


_ENTRY_ID = re.compile(r"\d+-\d+")
_REPLAY_SLICE = 500


def _checked(ids: list[str]) -> list[str]:
    """Refuse the whole request before touching anything if any id is not a stream entry id."""
    bad = [i for i in ids if not _ENTRY_ID.fullmatch(i)]
    if bad:
        raise ConfigurationError(f"not stream entry ids (like 1732270000000-0): {', '.join(bad)}")
    return ids


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return repr(value)


@dataclass(frozen=True)
class DeadLetter:
    """One entry of a dead-letter stream: the original fields plus why it failed."""

    id: str
    fields: dict[bytes, bytes]

    def get(self, name: str) -> str:
        raw = self.fields.get(name.encode())
        return "" if raw is None else _text(raw)

    @property
    def task(self) -> str:
        return self.get("task") or "?"

    @property
    def reason(self) -> str:
        return f"{self.get('error_type')}: {self.get('error')}"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view: failure fields, original fields, and the decoded call if any."""
        out: dict[str, Any] = {"id": self.id}
        for key, value in self.fields.items():
            name = _text(key)
            if name == "call":
                try:
                    call = unpack(value)
                except Exception as exc:  # garbage is exactly what a DLQ holds
                    call = {"undecodable": str(DecodeError(str(exc)))}
                out["call"] = call
            elif name == "id":
                out["task_id"] = _text(value)  # "id" stays the dead-letter entry's own id
            else:
                out[name] = _text(value)
        return out


class DeadLetters:
    """The dead-letter stream of one queue."""

    def __init__(self, app: App, queue: str):
        self.app = app
        self.keys = app.keys(app.check_queue(queue))

    def list(self, limit: int | None = None) -> builtins.list[DeadLetter]:
        return [DeadLetter(i, f) for i, f in self.app.broker.dead_entries(self.keys, count=limit)]

    def get(self, entry_id: str) -> DeadLetter | None:
        found = self.app.broker.dead_entries(self.keys, start=entry_id, count=1)
        return DeadLetter(*found[0]) if found and found[0][0] == entry_id else None

    def replay(self, ids: builtins.list[str] | None = None) -> builtins.list[str]:
        """Re-enqueue entries (all when `ids` is None), attempts reset; returns the ids moved."""
        ids = [d.id for d in self.list()] if ids is None else _checked(ids)
        done: builtins.list[str] = []
        # In slices: one script call holds Redis, so a huge dead-letter stream goes bit by bit.
        for start in range(0, len(ids), _REPLAY_SLICE):
            now_ms = int(self.app.clock() * 1000)
            done += self.app.broker.replay(self.keys, ids[start : start + _REPLAY_SLICE], now_ms)
        return done

    def purge(self, ids: builtins.list[str] | None = None) -> int:
        """Delete entries (all when `ids` is None); returns how many were deleted."""
        return self.app.broker.purge(self.keys, None if ids is None else _checked(ids))

    def __len__(self) -> int:
        return self.app.broker.dead_count(self.keys)
