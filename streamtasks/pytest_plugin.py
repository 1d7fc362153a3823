"""The pytest plugin, on wherever streamtasks is installed: the `streamtasks` fixture runs your
app's tasks inside the test, on a fresh in-memory Redis and a clock the test moves.

Name your app once, in pyproject.toml (or pytest.ini, as ``streamtasks_app = shop:app``)::

    [tool.pytest.ini_options]
    streamtasks_app = "shop:app"

or define a fixture ``streamtasks_app`` returning it. Then, in a test::

    def test_an_order_is_charged(streamtasks):
        result = place_order.delay("o-1", "u-1", 2)
        streamtasks.drain()
        assert result.get(timeout=0)["status"] == "accepted"

The fixture is a `streamtasks.testing.Harness`: drain(), enqueued(), advance(), kill_next(),
expire_lease_next(), redis_down(). Your real Redis is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamtasks.app import App, load_app
from streamtasks.errors import ConfigurationError
from streamtasks.testing import Harness

_INI = "streamtasks_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(_INI, "The streamtasks App the `streamtasks` fixture runs, as module:attribute")


@pytest.fixture
def streamtasks_app(request: pytest.FixtureRequest) -> App:
    """The App named by the `streamtasks_app` ini option; override this fixture to pick another."""
    target = request.config.getini(_INI)
    if not target:
        raise pytest.UsageError(
            f"the streamtasks fixture needs your app: set {_INI} = 'module:app' under "
            "[tool.pytest.ini_options] in pyproject.toml (or in pytest.ini), or define a "
            "fixture named streamtasks_app that returns it"
        )
    try:
        return load_app(str(target))
    except ConfigurationError as exc:
        raise pytest.UsageError(f"{_INI} = {target!r}: {exc}") from exc


@pytest.fixture
def streamtasks(streamtasks_app: App) -> Iterator[Harness]:
    """Your app on a fresh in-memory Redis and a manual clock, for this test only."""
    harness = Harness(streamtasks_app)
    try:
        yield harness
    finally:
        harness.close()
