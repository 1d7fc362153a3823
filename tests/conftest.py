"""Fixtures: a real redis-server per session (and per test where a test breaks it), apps isolated
by a unique name so tests never see each other's keys, and memory:// apps for fast unit tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamtasks import App, ConfigurationError
from streamtasks.connection import reset_memory
from tests.redis_server import RedisServer, ServerMissing, describe_server


def pytest_configure(config: pytest.Config) -> None:
    """Stop before any test if the server STREAMTASKS_TEST_SERVER asks for is missing."""
    try:
        describe_server()
    except (ServerMissing, ConfigurationError) as exc:
        raise pytest.UsageError(f"streamtasks test server: {exc}") from exc


def pytest_report_header(config: pytest.Config) -> str:
    return f"streamtasks test server: {describe_server()}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server started for this test session on a free loopback port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test, which the test may stop, restart or kill."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def app_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_app(redis_server: RedisServer, app_name: str) -> Iterator[App]:
    """An App on the session's real Redis, under a name no other test uses."""
    app = App(app_name, url=redis_server.url)
    yield app
    app.close()


@pytest.fixture
def memory_app(app_name: str) -> Iterator[App]:
    """An App on an in-process fakeredis server of its own."""
    app = App(app_name, url=f"memory://{app_name}")
    yield app
    app.close()
    reset_memory(app_name)


@pytest.fixture
def make_app(redis_server: RedisServer) -> Iterator[Callable[..., App]]:
    """More Apps on the session Redis (one name: the same queues, as separate processes would)."""
    apps: list[App] = []

    def make(name: str, **options: Any) -> App:
        app = App(name, url=options.pop("url", redis_server.url), **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
