"""AsyncBroker: what a producer in an event loop needs of Redis (enqueue, read results), on
redis.asyncio, with the same scripts and the same translation of redis-py's errors as `Broker`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import redis
import redis.asyncio

from streamtasks.broker import (
    Claim,
    Entry,
    ServerInfo,
    enqueue_call,
    load_script,
    translated,
)
from streamtasks.keys import QueueKeys
from streamtasks.message import Fields

P = ParamSpec("P")
T = TypeVar("T")


def _translating(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with translated():
            return await fn(*args, **kwargs)

    return wrapper


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class AsyncBroker:
    """The producer's half of `Broker` on redis.asyncio clients, which belong to the event loop
    they were made in: `client` for commands, `waiter` for reads that block waiting for a
    result, so that many `aget()`s waiting at once never hold up an enqueue."""

    def __init__(self, client: redis.asyncio.Redis, waiter: redis.asyncio.Redis):
        self.client = client
        self.waiter = waiter
        self._r: Any = client  # replies are read by their known shape, as in Broker
        self._w: Any = waiter
        self._enqueue = client.register_script(load_script("enqueue"))
        self.server: ServerInfo | None = None

    @_translating
    async def check_server(self) -> ServerInfo:
        """As `Broker.check_server`: once, and refusing a Redis older than 6.2."""
        if self.server is None:
            if ServerInfo.is_fake(self.client):
                self.server = ServerInfo("fakeredis", "")
                return self.server
            try:
                server = ServerInfo.of(await self._r.info("server"))
            except redis.ResponseError as exc:
                raise ServerInfo.refused(exc) from exc
            self.server = server.check()
        return self.server

    @_translating
    async def add(self, keys: QueueKeys, fields: Fields) -> str:
        if self.server is None:
            await self.check_server()
        return _s(await self._r.xadd(keys.stream, fields))

    @_translating
    async def enqueue(
        self,
        keys: QueueKeys,
        task_id: str,
        fields: Fields,
        *,
        due_ms: int = 0,
        claim: Claim | None = None,
    ) -> tuple[str, int]:
        """As `Broker.enqueue`: (task id, ENQUEUED, DUPLICATE or CONFLICT)."""
        if self.server is None:
            await self.check_server()
        script_keys, args = enqueue_call(keys, task_id, fields, due_ms, claim)
        found_id, code = await self._enqueue(keys=script_keys, args=args)
        return _s(found_id), int(code)

    @_translating
    async def set_progress(self, key: str, data: bytes, ttl_ms: int) -> None:
        await self._r.set(key, data, px=ttl_ms)

    @_translating
    async def result_entries(self, key: str, after: str, block_ms: int | None) -> list[Entry]:
        reply = await (self._r if block_ms is None else self._w).xread({key: after}, block=block_ms)
        if not reply:
            return []
        return [(_s(eid), fields) for eid, fields in reply[0][1]]

    @_translating
    async def result_last(self, key: str) -> dict[bytes, bytes] | None:
        found = await self._r.xrevrange(key, count=1)
        return found[0][1] if found else None

    async def close(self) -> None:
        await self.client.aclose()
        await self.waiter.aclose()
