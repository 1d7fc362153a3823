"""A throwaway redis-server for one benchmark run: a free loopback port, no persistence."""

from __future__ import annotations

import tempfile
from pathlib import Path

import redis

from tests.redis_server import RedisServer


class BenchRedis:
    """One redis-server on 127.0.0.1, started on enter and stopped on exit, whatever happened.

    Persistence is off (no AOF, no RDB): every contestant gets the same memory-only server, so
    fsync cost does not blur the comparison.
    """

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="streamtasks-bench-")
        self._server = RedisServer(Path(self._dir.name), options=("--appendonly", "no"))

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def version(self) -> str:
        return str(self.client().info("server")["redis_version"])

    def client(self) -> redis.Redis:
        return self._server.client()

    def __enter__(self) -> BenchRedis:
        try:
            self._server.start()
        except BaseException:
            self._dir.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
        self._dir.cleanup()
