"""Integration helpers on the real Redis: drive the broker as two consumers would."""

from __future__ import annotations

from dataclasses import dataclass

from streamtasks import App
from streamtasks.broker import Reclaimed
from streamtasks.keys import GROUP, QueueKeys


@dataclass
class Consumer:
    """One consumer of a queue's group, driven step by step through the app's broker."""

    app: App
    name: str
    queue: str = "default"

    @property
    def keys(self) -> QueueKeys:
        return self.app.keys(self.queue)

    def read(self, count: int = 10) -> list[str]:
        self.app.broker.ensure_group(self.keys)
        batches = self.app.broker.read([self.keys], self.name, count, None)
        return [entry_id for batch in batches for entry_id, _ in batch.entries]

    def reclaim(
        self,
        *,
        timeouts_ms: dict[str, int] | None = None,
        max_deliveries: int = 5,
        default_timeout_ms: int | None = None,
        cursor: str = "-",
        limit: int | None = None,
    ) -> Reclaimed:
        if default_timeout_ms is None:
            default_timeout_ms = int(self.app.visibility_timeout * 1000)
        return self.app.broker.reclaim(
            self.keys,
            self.name,
            cursor=cursor,
            count=100,
            max_deliveries=max_deliveries,
            default_timeout_ms=default_timeout_ms,
            timeouts_ms=timeouts_ms or {},
            own=False,
            now_ms=int(self.app.clock() * 1000),
            result_ttl_ms=int(self.app.result_ttl * 1000),
            limit=limit,
        )

    def age(self, entry_id: str, idle_ms: int) -> None:
        """Make an entry this consumer holds look idle for `idle_ms`, as if it had hung that long
        (XCLAIM to itself with IDLE and JUSTID: the delivery count does not change)."""
        self.app.broker.client.xclaim(
            self.keys.stream, GROUP, self.name, 0, [entry_id], idle=idle_ms, justid=True
        )

    def pending(self) -> dict[str, str]:
        """Entry id -> owning consumer, for the whole group."""
        rows = self.app.broker.client.xpending_range(self.keys.stream, GROUP, "-", "+", 100)
        return {_s(r["message_id"]): _s(r["consumer"]) for r in rows}


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
