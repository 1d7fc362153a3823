"""The raw-Redis limit: a plain redis-py consumer loop with no framework, run as its own process.

XREADGROUP COUNT 100 -> msgpack-decode each entry -> call the body -> one pipeline of XACKs.
It keeps no result, retries nothing and does not XDEL, so it is an upper bound, not a peer.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Callable
from typing import Any

import msgpack
import redis

from benchmarks import bodies
from benchmarks.names import RAW_GROUP, RAW_STREAM


def fields(task: str, args: list[Any]) -> dict[str, bytes | str]:
    """The entry a producer writes: the same envelope streamtasks uses, built by hand."""
    import uuid

    call = msgpack.packb({"args": args, "kwargs": {}, "headers": {}}, use_bin_type=True)
    return {"schema_version": "1", "id": uuid.uuid4().hex, "task": task, "call": call}


def ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(RAW_STREAM, RAW_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def serve(client: redis.Redis, max_seconds: float) -> None:
    work: dict[bytes, Callable[..., None]] = {
        b"noop": bodies.noop,
        b"incr": lambda *a: bodies.incr(client),
        b"stamp": lambda at: bodies.stamp(client, at),
    }
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ensure_group(client)
    deadline = time.monotonic() + max_seconds
    while not stopping and time.monotonic() < deadline:
        reply = client.xreadgroup(RAW_GROUP, "raw-1", {RAW_STREAM: ">"}, count=100, block=1000)
        for _stream, entries in reply or []:
            pipe = client.pipeline(transaction=False)
            for entry_id, entry in entries:
                call = msgpack.unpackb(entry[b"call"], raw=False)
                work[entry[b"task"]](*call["args"], **call["kwargs"])
                pipe.xack(RAW_STREAM, RAW_GROUP, entry_id)
            pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    serve(redis.Redis.from_url(args.url), args.max_seconds)


if __name__ == "__main__":
    main()
