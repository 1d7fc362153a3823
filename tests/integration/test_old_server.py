"""A Redis too old to run on is refused by name, by producers and workers alike, instead of
silently breaking delayed tasks and recovery (XAUTOCLAIM, ZRANGE BYSCORE came in Redis 6.2)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from streamtasks import App, ConfigurationError
from tests.e2e.conftest import ROOT
from tests.redis_server import RedisServer

INFO = b"# Server\r\nredis_version:6.0.16\r\nredis_mode:standalone\r\n"
# redis-py opens each connection with HELLO 3, and reads a RESP3 map back.
HELLO = b"%3\r\n+server\r\n+redis\r\n+version\r\n+6.0.16\r\n+proto\r\n:3\r\n"


def answer(conn: socket.socket) -> None:
    """Speak just enough RESP: HELLO and INFO tell an old version, anything else is +OK."""
    with conn:
        buffer = b""
        while chunk := conn.recv(65536):
            buffer += chunk
            while buffer.startswith(b"*"):
                lines = buffer.split(b"\r\n")
                count = int(lines[0][1:])
                if len(lines) < 1 + 2 * count + 1:
                    break
                words = [lines[2 + 2 * i] for i in range(count)]
                buffer = b"\r\n".join(lines[1 + 2 * count :])
                if words[0].upper() == b"HELLO":
                    conn.sendall(HELLO)
                elif words[0].upper() == b"INFO":
                    conn.sendall(b"$%d\r\n%s\r\n" % (len(INFO), INFO))
                else:
                    conn.sendall(b"+OK\r\n")


@pytest.fixture
def old_redis() -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"redis://127.0.0.1:{port}/0"
    listener.close()


def test_a_producer_refuses_redis_6_0_naming_its_version(old_redis: str, app_name: str) -> None:
    app = App(app_name, url=old_redis)
    task = app.task(name="ping")(lambda: None)
    with pytest.raises(ConfigurationError, match=r"needs Redis 6\.2 or newer .*Redis 6\.0\.16"):
        task.delay()
    app.close()


def test_a_worker_refuses_redis_6_0_and_exits_non_zero(old_redis: str, tmp_path: object) -> None:
    worker = subprocess.run(
        [sys.executable, "-m", "streamtasks", "worker", "-A", "tests.e2e.tasks:app"],
        cwd=ROOT,
        env={"STREAMTASKS_URL": old_redis, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert worker.returncode != 0
    assert "needs Redis 6.2 or newer (or Valkey); this server is Redis 6.0.16" in worker.stderr


def test_a_user_not_allowed_info_is_told_so_not_taken_for_a_fake_server(
    own_redis: RedisServer, app_name: str
) -> None:
    own_redis.client().acl_setuser(
        "noinfo", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
        commands=["+@all", "-info"],
    )  # fmt: skip
    app = App(app_name, url=f"redis://noinfo:secret@127.0.0.1:{own_redis.port}/0")
    task = app.task(name="ping")(lambda: None)
    with pytest.raises(ConfigurationError, match=r"INFO was refused .*allow the INFO command"):
        task.delay()
    app.close()
