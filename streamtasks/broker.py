"""The broker: the only code that speaks to Redis, and where redis-py exceptions become ours.

Each method is one round trip. The steps that must be atomic (enqueue with a key or a delay, settle,
promote, reclaim, lease, prune, replay) are Lua scripts in ``streamtasks/lua``; docs/architecture.md
explains each.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple, ParamSpec, TypeVar

import redis

from streamtasks.errors import BrokerUnavailable, ConfigurationError, DecodeError, StreamTasksError
from streamtasks.keys import GROUP, QueueKeys, WorkerKeys
from streamtasks.message import Fields, flatten, pack, unnetstring
from streamtasks.protocol import ENQUEUED, REFUSED, SettleRecord

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

Entry = tuple[str, dict[bytes, bytes]]

#: The oldest Redis streamtasks runs on: XAUTOCLAIM, ZRANGE BYSCORE and XPENDING IDLE came in 6.2.
MIN_REDIS = (6, 2)

#: Idle time given to an entry that is handed back, so any worker's next reclaim pass takes it.
HANDED_BACK_IDLE_MS = 10**12


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise redis-py exceptions as streamtasks ones."""
    try:
        yield
    except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
        # Before ConnectionError, their base: bad credentials are not an outage to wait out.
        raise ConfigurationError(f"Redis refused the credentials: {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailable(f"Redis unreachable: {exc}") from exc
    except redis.ResponseError as exc:
        if "LOADING" in str(exc) or "MASTERDOWN" in str(exc):
            raise BrokerUnavailable(f"Redis not ready: {exc}") from exc
        raise StreamTasksError(f"Redis refused a command: {exc}") from exc
    except redis.RedisError as exc:
        raise StreamTasksError(f"Redis client error: {exc}") from exc


def _translating(fn: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with translated():
            return fn(*args, **kwargs)

    return wrapper


class Claim(NamedTuple):
    """An idempotency key an enqueue claims for a call: the key as the app names it, the call's
    fingerprint, how long the key holds, and whether a failed run keeps it for all that time."""

    key: str
    fingerprint: str
    ttl_ms: int
    keep_on_failure: bool = False


class ServerInfo(NamedTuple):
    """What the server says it is, `redis` or `valkey` (any Valkey speaks Redis 7.2 or later),
    or `fakeredis` for memory://, and its version."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name.capitalize()} {self.version}".rstrip()

    @staticmethod
    def is_fake(client: object) -> bool:
        """Whether `client` is fakeredis's (memory://), which has no INFO to ask."""
        return type(client).__module__.startswith("fakeredis")

    @staticmethod
    def refused(exc: redis.ResponseError) -> ConfigurationError:
        return ConfigurationError(
            f"cannot check the server's version: INFO was refused ({exc}); allow the INFO "
            "command for this Redis user"
        )

    @classmethod
    def of(cls, info: Mapping[str, Any]) -> ServerInfo:
        """From the reply to INFO server."""
        name = str(info.get("server_name") or "redis")
        return cls(name, str(info.get(f"{name}_version") or info.get("redis_version") or "0"))

    def check(self) -> ServerInfo:
        """This server, or ConfigurationError if it is too old to run on (a Redis before 6.2
        would silently break delayed tasks and recovery)."""
        if not self.supported:
            raise ConfigurationError(
                f"streamtasks needs Redis {'.'.join(map(str, MIN_REDIS))} or newer (or "
                f"Valkey); this server is {self}"
            )
        return self

    @property
    def supported(self) -> bool:
        if self.name != "redis":
            return True
        numbers = tuple(int(part) for part in re.findall(r"\d+", self.version)[:2])
        return numbers >= MIN_REDIS


class Batch(NamedTuple):
    """Entries read from one stream; `revocations`: its queue has revoked tasks to look for."""

    stream: str
    entries: list[Entry]
    revocations: bool


class QueueStatus(NamedTuple):
    """A queue at one moment: entries never delivered (`waiting`), delivered and not settled
    (`in_flight`), delayed, dead-lettered; when the oldest waiting entry was added (Unix ms, None
    if nothing waits); the consumers of its group; and how many runs ended in each minute asked
    for."""

    waiting: int
    in_flight: int
    delayed: int
    dead: int
    oldest_waiting_ms: int | None
    consumers: int
    ended: list[int]

    def oldest_waited(self, now: float) -> float | None:
        """How long the oldest waiting entry has waited at `now` (Unix seconds), if one does."""
        oldest = self.oldest_waiting_ms
        return None if oldest is None else max(0.0, now - oldest / 1000)


class Buried(NamedTuple):
    """An entry reclaim dead-lettered because it was delivered max_deliveries times."""

    task_id: str
    task: str
    attempt: int
    deliveries: int


@dataclass(frozen=True)
class Reclaimed:
    cursor: str
    entries: list[Entry]
    dead: list[Buried]


def enqueue_call(
    keys: QueueKeys, task_id: str, fields: Fields, due_ms: int, claim: Claim | None
) -> tuple[list[str], list[Any]]:
    """The KEYS and ARGV of enqueue.lua for one message."""
    key_args: list[Any] = [0, "", 0]
    # Without a claim the script ignores its third key; the stream stands in (same slot).
    ikey = keys.stream
    if claim is not None:
        ikey = keys.idempotency(claim.key)
        key_args = [claim.ttl_ms, claim.fingerprint, int(claim.keep_on_failure)]
    return [keys.stream, keys.delayed, ikey, keys.wake], [
        task_id,
        due_ms,
        *key_args,
        *flatten(fields),
    ]


def load_script(name: str) -> str:
    """The source of a script in streamtasks/lua, with lib.lua's helpers before it."""
    lua = resources.files("streamtasks") / "lua"
    return (lua / "lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def _group_missing(exc: redis.ResponseError) -> bool:
    # Redis 6.2 wraps an error raised inside a script ("Error running script ...: NOGROUP ..."),
    # hence "in"; UNBLOCKED: the stream was deleted while a read waited on it (Redis 7).
    message = str(exc)
    return "NOGROUP" in message or message.startswith("UNBLOCKED")


def _due_of(fields: dict[bytes, bytes]) -> float:
    # An announcement someone else wrote badly still means "look now", never a crash.
    try:
        due = float(fields[b"due"])
    except (KeyError, ValueError):
        return 0.0
    return due if math.isfinite(due) else 0.0


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Broker:
    """Redis operations streamtasks needs, on one client (thread-safe through its pool)."""

    def __init__(self, client: redis.Redis):
        self.client = client
        # redis-py types replies as a union of every shape a command could return; the methods
        # below know each reply's shape, so they read replies through an untyped handle.
        self._r: Any = client
        self.server: ServerInfo | None = None  # known once `check_server` has asked
        self._scripts = {
            name: client.register_script(load_script(name))
            for name in (
                "enqueue",
                "settle",
                "promote",
                "reclaim",
                "lease",
                "prune",
                "replay",
                "register",
            )
        }

    # -- the server ------------------------------------------------------------------------

    @_translating
    def check_server(self) -> ServerInfo:
        """Ask the server what it is, once; ConfigurationError if it is too old to run on (a
        Redis before 6.2 would silently break delayed tasks and recovery)."""
        if self.server is None:
            self.server = self._server_info().check()
        return self.server

    def _server_info(self) -> ServerInfo:
        # INFO, not HELLO: redis-py 8 reads a HELLO reply as a protocol switch, which leaves a
        # fakeredis client misreading every later stream reply.
        if ServerInfo.is_fake(self.client):
            return ServerInfo("fakeredis", "")
        try:
            return ServerInfo.of(self._r.info("server"))
        except redis.ResponseError as exc:
            raise ServerInfo.refused(exc) from exc

    # -- producing -------------------------------------------------------------------------

    @_translating
    def add(self, keys: QueueKeys, fields: Fields) -> str:
        """Append a message now: one XADD, the fast path."""
        if self.server is None:
            self.check_server()
        return _s(self._r.xadd(keys.stream, fields))

    @_translating
    def add_many(
        self, keys: QueueKeys, batch: Sequence[tuple[str, Fields, Claim | None]]
    ) -> list[tuple[str, int]]:
        """Append many messages (task id, fields, idempotency claim or None) in one round trip;
        a keyed one goes through enqueue.lua. For each, what `enqueue` returns."""
        if self.server is None:
            self.check_server()
        pipe = self._r.pipeline(transaction=False)
        for task_id, fields, claim in batch:
            if claim is None:
                pipe.xadd(keys.stream, fields)
            else:
                self._enqueue_script(keys, task_id, fields, 0, claim, pipe)
        replies = pipe.execute()
        return [
            (task_id, ENQUEUED) if claim is None else (_s(reply[0]), int(reply[1]))
            for (task_id, _, claim), reply in zip(batch, replies, strict=True)
        ]

    @_translating
    def enqueue(
        self,
        keys: QueueKeys,
        task_id: str,
        fields: Fields,
        *,
        due_ms: int = 0,
        claim: Claim | None = None,
    ) -> tuple[str, int]:
        """Enqueue now or at `due_ms`, at most once per idempotency key: (the task id, ENQUEUED),
        or the id the key names already with DUPLICATE (same call) or CONFLICT (another call)."""
        if self.server is None:
            self.check_server()
        found_id, code = self._enqueue_script(keys, task_id, fields, due_ms, claim, self._r)
        return _s(found_id), int(code)

    def _enqueue_script(
        self,
        keys: QueueKeys,
        task_id: str,
        fields: Fields,
        due_ms: int,
        claim: Claim | None,
        client: Any,
    ) -> Any:
        """Call enqueue.lua on `client` (the connection, or a pipeline to queue it on)."""
        script_keys, args = enqueue_call(keys, task_id, fields, due_ms, claim)
        return self._scripts["enqueue"](keys=script_keys, args=args, client=client)

    @_translating
    def release(self, keys: QueueKeys, key: str) -> bool:
        """Forget an idempotency key, so the next enqueue with it runs a new task."""
        return bool(self._r.delete(keys.idempotency(key)))

    # -- consuming -------------------------------------------------------------------------

    @_translating
    def ensure_group(self, keys: QueueKeys) -> None:
        """Create the queue's consumer group (and stream) unless it exists; reads from the start."""
        self._create_group(keys.stream)

    def _create_group(self, stream: str) -> None:
        try:
            self._r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @_translating
    def read(
        self, queues: Sequence[QueueKeys], consumer: str, count: int, block_ms: int | None
    ) -> list[Batch]:
        """XREADGROUP new entries from several queues' streams, and in the same round trip, once
        the read returns, whether each queue has revoked tasks to look for among them."""
        streams = [k.stream for k in queues]
        pipe = self._r.pipeline(transaction=False)
        pipe.xreadgroup(GROUP, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms)
        for keys in queues:
            pipe.zcard(keys.revoked)
        reply, *revoked = pipe.execute(raise_on_error=False)
        if isinstance(reply, redis.ResponseError):
            if not _group_missing(reply):
                raise reply
            self._recreate_groups(streams)
            return []
        for found in revoked:
            if isinstance(found, Exception):
                raise found
        revoking = {k.stream for k, n in zip(queues, revoked, strict=True) if n}
        return [
            Batch(
                _s(stream), [(_s(eid), fields) for eid, fields in entries], _s(stream) in revoking
            )
            for stream, entries in (reply or [])
        ]

    @_translating
    def revoked_among(self, keys: QueueKeys, task_ids: Sequence[str]) -> set[str]:
        """Those of `task_ids` that are revoked."""
        if not task_ids:
            return set()
        scores = self._r.zmscore(keys.revoked, list(task_ids))
        return {task_id for task_id, score in zip(task_ids, scores, strict=True) if score}

    @_translating
    def revoke(self, keys: QueueKeys, task_id: str, *, now_ms: int, keep_ms: int) -> None:
        """Record a revoked task for `keep_ms`, forgetting those whose time is up (MULTI)."""
        pipe = self._r.pipeline(transaction=True)
        pipe.zremrangebyscore(keys.revoked, "-inf", now_ms)
        pipe.zadd(keys.revoked, {task_id: now_ms + keep_ms})
        # The set goes when its newest revocation would be forgotten (every one is kept as long),
        # so a queue with no revoked task left costs its reads nothing more.
        pipe.pexpire(keys.revoked, keep_ms)
        pipe.execute()

    def _recreate_groups(self, streams: Iterable[str]) -> None:
        log.warning(
            "consumer group missing on %s: Redis lost its data (restarted without persistence, "
            "failed over, flushed?); recreating it. Entries that were in flight are gone.",
            ", ".join(streams),
        )
        for stream in streams:
            self._create_group(stream)

    @_translating
    def done_flags(self, claims: Sequence[tuple[str, str]]) -> list[bool]:
        """For each (idempotency hash, task id), whether a run of that task with that key
        already completed."""
        pipe = self._r.pipeline(transaction=False)
        for key, _ in claims:
            pipe.hmget(key, "id", "done")
        return [
            found == [task_id.encode(), b"1"]
            for (_, task_id), found in zip(claims, pipe.execute(), strict=True)
        ]

    @_translating
    def settle(
        self,
        keys: QueueKeys,
        consumer: str,
        records: Sequence[SettleRecord],
        *,
        minute: int | None = None,
    ) -> list[int]:
        """Apply finished runs, each atomically, in one round trip, counting those that ended in
        `minute` (Unix time // 60; default: now). One code per record: SETTLED, REFUSED (another
        consumer owns the entry now), or GONE (a success whose entry no longer exists anywhere:
        its result was recorded, there was nothing left to ack)."""
        plain: list[int] = []
        full: list[int] = []
        for i, r in enumerate(records):
            (plain if r.is_plain_ack else full).append(i)
        extra_keys: list[str] = []
        args: list[Any] = [GROUP, consumer, len(plain), *(records[i].entry_id for i in plain)]
        for i in full:
            r = records[i]
            rkey = ikey = 0
            if r.result_key is not None:
                extra_keys.append(r.result_key)
                rkey = 5 + len(extra_keys)
            if r.idempotency_key is not None:
                extra_keys.append(r.idempotency_key)
                ikey = 5 + len(extra_keys)
            args += [
                r.entry_id,
                r.action,
                r.task_id,
                rkey,
                r.result_ttl_ms,
                r.status,
                r.data,
                ikey,
                r.extra,
            ]
        if minute is None:
            minute = int(time.time() // 60)
        settle_keys = [keys.stream, keys.dead, keys.delayed, keys.wake, keys.done(minute)]
        settle_keys += extra_keys
        try:
            applied = self._scripts["settle"](keys=settle_keys, args=args)
        except redis.ResponseError as exc:
            if not _group_missing(exc):
                raise
            # Redis lost the group: recreate it and settle again, so that finished runs whose
            # entries are gone still record their results (GONE).
            self._recreate_groups([keys.stream])
            applied = self._scripts["settle"](keys=settle_keys, args=args)
        codes = [REFUSED] * len(records)
        for i, code in zip(plain + full, applied, strict=True):
            codes[i] = int(code)
        return codes

    @_translating
    def promote(self, keys: QueueKeys, now_ms: int, limit: int = 500) -> tuple[int, int | None]:
        """Move due delayed messages into the stream; (moved, next due ms or None)."""
        moved, next_due = self._scripts["promote"](
            keys=[keys.delayed, keys.stream], args=[now_ms, limit]
        )
        return int(moved), None if int(next_due) < 0 else int(next_due)

    @_translating
    def wakes(self, after: Mapping[str, str], block_ms: int) -> dict[str, tuple[str, float]]:
        """Wait up to `block_ms` for announcements on wake streams (key: the id read last). For
        each stream that had any: (its last id, the soonest due time announced, in ms)."""
        reply = self._r.xread(dict(after), block=max(1, block_ms))
        return {
            _s(stream): (_s(entries[-1][0]), min(_due_of(fields) for _, fields in entries))
            for stream, entries in reply or []
        }

    @_translating
    def not_streams(self, keys: Sequence[str]) -> list[str]:
        """Those of `keys` that exist and hold something other than a stream."""
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
        kinds = [_s(kind) for kind in pipe.execute()]
        return [
            key for key, kind in zip(keys, kinds, strict=True) if kind not in ("stream", "none")
        ]

    @_translating
    def reclaim(
        self,
        keys: QueueKeys,
        consumer: str,
        *,
        cursor: str,
        count: int,
        max_deliveries: int,
        default_timeout_ms: int,
        timeouts_ms: dict[str, int],
        own: bool,
        now_ms: int,
        result_ttl_ms: int,
        limit: int | None = None,
    ) -> Reclaimed:
        """Claim abandoned entries (see reclaim.lua); one delivered `max_deliveries` times is
        dead-lettered instead, and its producer gets a DEAD result kept `result_ttl_ms`. Looks at
        up to `count` pending entries and claims at most `limit` (default: `count`)."""
        dead = {
            "type": "MaxDeliveriesExceeded",
            "message": f"delivered {max_deliveries} times without finishing; a worker died on each",
            "traceback": "",
        }
        args: list[Any] = [
            GROUP,
            consumer,
            cursor,
            count,
            max_deliveries,
            default_timeout_ms,
            int(own),
            now_ms,
            keys.result_prefix,
            result_ttl_ms,
            pack(dead),
            count if limit is None else limit,
            keys.idempotency_prefix,
        ]
        for name, timeout in timeouts_ms.items():
            args += [name, timeout]
        counted = keys.done(now_ms // 60_000)  # a dead letter is a run that ended
        nxt, flat, dead = self._scripts["reclaim"](
            keys=[keys.stream, keys.dead, counted], args=args
        )
        entries = [
            (_s(flat[i]), dict(zip(flat[i + 1][::2], flat[i + 1][1::2], strict=True)))
            for i in range(0, len(flat), 2)
        ]
        buried = [
            Buried(_s(dead[i]), _s(dead[i + 1]), int(dead[i + 2]), int(dead[i + 3]))
            for i in range(0, len(dead), 4)
        ]
        return Reclaimed(_s(nxt), entries, buried)

    @_translating
    def lease(
        self, keys: QueueKeys, consumer: str, ids: Sequence[str], *, hand_back: bool
    ) -> set[str]:
        """Renew (or hand back) entries still owned; returns the ids owned by someone else now."""
        if not ids:
            return set()
        idle = HANDED_BACK_IDLE_MS if hand_back else 0
        lost = self._scripts["lease"](keys=[keys.stream], args=[GROUP, consumer, idle, *ids])
        return {_s(i) for i in lost}

    @_translating
    def take_over(self, keys: QueueKeys, consumer: str, ids: Sequence[str], idle_ms: int) -> None:
        """Give pending entries to `consumer` with this idle time, whoever holds them, without
        counting a delivery: as if their lease ran out and another worker took them
        (streamtasks.testing's fault injection; workers reclaim through `reclaim`)."""
        if ids:
            self._r.xclaim(keys.stream, GROUP, consumer, 0, list(ids), idle=idle_ms, justid=True)

    @_translating
    def waiting(self, keys: QueueKeys) -> list[Entry]:
        """The entries in a queue's stream, oldest first: not yet read, or read and unsettled."""
        return [(_s(eid), f) for eid, f in self._r.xrange(keys.stream)]

    @_translating
    def delayed(self, keys: QueueKeys) -> list[tuple[int, dict[bytes, bytes]]]:
        """The delayed messages of a queue, soonest first: (due ms, fields); a member that is not
        a message (someone else's) has its bytes under `raw`, as promote would send it."""
        found = []
        for blob, due in self._r.zrange(keys.delayed, 0, -1, withscores=True):
            try:
                values = unnetstring(blob)
                fields = dict(zip(values[::2], values[1::2], strict=True))
            except (DecodeError, ValueError):
                fields = {b"raw": blob}
            found.append((int(due), fields))
        return found

    @_translating
    def prune(self, keys: QueueKeys, consumer: str, idle_ms: int) -> int:
        return int(self._scripts["prune"](keys=[keys.stream], args=[GROUP, idle_ms, consumer]))

    @_translating
    def backlog(self, keys: QueueKeys) -> tuple[int, int, int]:
        """(entries not yet delivered or still pending, pending, delayed) of a queue."""
        # MULTI: one snapshot, so a message being promoted is never counted in neither place.
        pipe = self._r.pipeline(transaction=True)
        pipe.xlen(keys.stream)
        pipe.xpending(keys.stream, GROUP)
        pipe.zcard(keys.delayed)
        length, pending, delayed = pipe.execute(raise_on_error=False)
        if isinstance(pending, redis.ResponseError):
            if not _group_missing(pending):
                raise pending
            pending = {"pending": 0}  # no worker has served this queue yet
        return int(length), int(pending["pending"]), int(delayed)

    # -- results ---------------------------------------------------------------------------

    @_translating
    def result_entries(
        self, key: str, after: str, block_ms: int | None
    ) -> list[tuple[str, dict[bytes, bytes]]]:
        """Result stream entries after `after`, waiting up to block_ms (None: do not wait)."""
        reply = self._r.xread({key: after}, block=block_ms)
        if not reply:
            return []
        return [(_s(eid), fields) for eid, fields in reply[0][1]]

    @_translating
    def result_last(self, key: str) -> dict[bytes, bytes] | None:
        found = self._r.xrevrange(key, count=1)
        return found[0][1] if found else None

    @_translating
    def set_progress(self, key: str, data: bytes, ttl_ms: int) -> None:
        self._r.set(key, data, px=ttl_ms)

    @_translating
    def progress(self, key: str) -> bytes | None:
        return self._r.get(key)  # type: ignore[no-any-return]

    @_translating
    def write_status(self, key: str, status: str, ttl_ms: int) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.xadd(key, {"status": status, "data": b""})
        pipe.pexpire(key, ttl_ms)
        pipe.execute()

    # -- dead letters ----------------------------------------------------------------------

    @_translating
    def dead_entries(
        self, keys: QueueKeys, start: str = "-", count: int | None = None
    ) -> list[Entry]:
        return [(_s(eid), f) for eid, f in self._r.xrange(keys.dead, min=start, count=count)]

    @_translating
    def replay(
        self, keys: QueueKeys, ids: Iterable[str], now_ms: int, idempotency_ttl_ms: int
    ) -> tuple[list[str], list[str]]:
        """Re-enqueue dead letters (see replay.lua): (ids replayed, ids left in place because
        their idempotency key names another task now)."""
        args: list[Any] = [now_ms, keys.result_prefix, keys.idempotency_prefix, idempotency_ttl_ms]
        args += ids
        done, left = self._scripts["replay"](keys=[keys.dead, keys.stream], args=args)
        return [_s(i) for i in done], [_s(i) for i in left]

    @_translating
    def purge(self, keys: QueueKeys, ids: Sequence[str] | None) -> int:
        if ids is None:
            pipe = self._r.pipeline(transaction=True)
            pipe.xlen(keys.dead)
            pipe.delete(keys.dead)
            return int(pipe.execute()[0])
        return int(self._r.xdel(keys.dead, *ids)) if ids else 0

    @_translating
    def dead_count(self, keys: QueueKeys) -> int:
        return int(self._r.xlen(keys.dead))

    @_translating
    def queue_status(self, keys: QueueKeys, minutes: Sequence[int]) -> QueueStatus:
        """The queue now, with the runs that ended in each of `minutes` (Unix time // 60). Reads
        only: a queue nobody used yet reads as zeros and is not created."""
        # MULTI: one snapshot of the counts (a settled entry leaves the stream and the pending
        # list together).
        pipe = self._r.pipeline(transaction=True)
        pipe.xlen(keys.stream)
        pipe.xinfo_groups(keys.stream)
        pipe.zcard(keys.delayed)
        pipe.xlen(keys.dead)
        pipe.mget([keys.done(m) for m in minutes])
        length, groups, delayed, dead, ended = pipe.execute(raise_on_error=False)
        if isinstance(groups, redis.ResponseError):
            if "no such key" not in str(groups).lower():
                raise groups
            groups = []  # no stream yet
        group = next((g for g in groups if _s(g["name"]) == GROUP), None)
        in_flight = int(group["pending"]) if group else 0
        # Settled entries are deleted: what is in the stream is in flight or waiting. (A pending
        # entry trimmed from the stream counts in flight but not in the length: hence the floor.)
        waiting = max(0, int(length) - in_flight)
        oldest = None
        if waiting > 0:
            after = _s(group["last-delivered-id"]) if group else "0-0"
            found = self._r.xrange(keys.stream, f"({after}", "+", count=1)
            oldest = int(_s(found[0][0]).split("-")[0]) if found else None
        return QueueStatus(
            waiting,
            in_flight,
            int(delayed),
            int(dead),
            oldest,
            int(group["consumers"]) if group else 0,
            [int(n or 0) for n in ended],
        )

    # -- the worker registry ---------------------------------------------------------------

    @_translating
    def register(
        self,
        workers: WorkerKeys,
        name: str,
        mode: str,
        instance: str,
        *,
        now_ms: int,
        ttl_ms: int,
        record: Mapping[str, str] | None = None,
        expected: str = "",
    ) -> dict[str, str] | None:
        """Write, refresh or delete worker `name`'s record (see register.lua for `mode`; a
        'take' takes the name only from instance `expected`): None when done, else the record
        of the live worker that holds the name."""
        args: list[Any] = [mode, instance, name, now_ms, ttl_ms, expected]
        for field, value in (record or {}).items():
            args += [field, value]
        reply = self._scripts["register"](keys=[workers.worker(name), workers.index], args=args)
        if int(reply[0]) == 1:
            return None
        flat = reply[1:]
        return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}

    @_translating
    def lead(self, key: str, token: str, ttl_ms: int) -> bool:
        """Take or keep the lease `key` for `token` for `ttl_ms`; False if another holds it.
        (Kept with a GET then a PEXPIRE: should the lease lapse between them, two holders
        measure the same figures for one round, which does no harm.)"""
        if self._r.set(key, token, nx=True, px=ttl_ms):
            return True
        if _s(self._r.get(key) or b"") != token:
            return False
        self._r.pexpire(key, ttl_ms)
        return True

    @_translating
    def workers(self, workers: WorkerKeys) -> list[dict[str, str]]:
        """The records of the app's live workers, by name."""
        names = [_s(n) for n in self._r.zrange(workers.index, 0, -1)]
        pipe = self._r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(workers.worker(name))
        found = [{_s(k): _s(v) for k, v in r.items()} for r in pipe.execute()]
        return sorted((r for r in found if r), key=lambda r: r.get("name", ""))

    @_translating
    def ping(self) -> None:
        self._r.ping()
