"""Unit-test fixtures: memory:// apps (fakeredis, one per test) built with extra options."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streamtasks import App
from streamtasks.connection import reset_memory
from streamtasks.testing import ManualClock
from tests.unit.support import LeapingClock


@pytest.fixture
def make_memory_app(app_name: str) -> Iterator[Callable[..., App]]:
    """Build an App on this test's own fakeredis server, with any App options."""
    apps: list[App] = []

    def make(**options: Any) -> App:
        app = App(app_name, url=f"memory://{app_name}", **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
    reset_memory(app_name)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def clock_app(make_memory_app: Callable[..., App], clock: ManualClock) -> App:
    """A memory:// app whose clock only moves when the test advances it."""
    return make_memory_app(clock=clock)


@pytest.fixture
def leaping_app(make_memory_app: Callable[..., App]) -> App:
    """A memory:// app whose clock leaps an hour per reading: delayed work is always due."""
    return make_memory_app(clock=LeapingClock())
