"""One endpoint for the worker processes of `-p`: the children's metrics, served as a child
serves them, added up so that no total ever goes down, even when a child is replaced."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamtasks.metrics import Gathered, children_health, serve

RUNS = """# HELP streamtasks_tasks_total Runs that ended.
# TYPE streamtasks_tasks_total counter
streamtasks_tasks_total{task="charge",queue="payments",outcome="succeeded"} %d
# HELP streamtasks_worker_in_flight Runs under way here.
# TYPE streamtasks_worker_in_flight gauge
streamtasks_worker_in_flight %d
# HELP streamtasks_worker_redis_silence_seconds Seconds since Redis last answered.
# TYPE streamtasks_worker_redis_silence_seconds gauge
streamtasks_worker_redis_silence_seconds %g
"""


class Child:
    """A worker process's endpoint, answering what the test says."""

    def __init__(self, runs: int, in_flight: int, silence: float, healthy: bool = True):
        self.body = (RUNS % (runs, in_flight, silence)).encode()
        self.healthy = healthy
        self.server = serve(
            lambda: self.body,
            lambda: None if self.healthy else "no answer from Redis for 6.0s",
            lambda: True,
            0,
            "127.0.0.1",
        )
        self.port = int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for child in made:
        child.close()


def read(text: bytes) -> dict[str, tuple[str, float]]:
    return {
        s.name: (family.type, s.value)
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_and_runs_in_flight_add_up_and_silence_is_the_longest(
    children: list[Child],
) -> None:
    children += [Child(40, 3, 0.5), Child(2, 1, 4.0)]
    found = read(Gathered().text({"w-1": children[0].port, "w-2": children[1].port}))
    assert found["streamtasks_tasks_total"] == ("counter", 42)
    assert found["streamtasks_worker_in_flight"] == ("gauge", 4)
    assert found["streamtasks_worker_redis_silence_seconds"] == ("gauge", 4.0)


def test_a_total_does_not_go_down_when_a_child_is_replaced_or_silent(
    children: list[Child],
) -> None:
    children += [Child(40, 0, 0.1), Child(2, 0, 0.1)]
    gathered = Gathered()
    gathered.text({"w-1": children[0].port, "w-2": children[1].port})

    children.append(Child(5, 0, 0.1))  # w-1 died; its successor counts from zero
    children[1].close()  # w-2 does not answer this time
    found = read(gathered.text({"w-1": children[2].port, "w-2": children[1].port}))
    assert found["streamtasks_tasks_total"] == ("counter", 40 + 5 + 2)


def test_the_endpoint_is_healthy_only_while_every_child_is(children: list[Child]) -> None:
    children += [Child(0, 0, 0.1), Child(0, 0, 6.0, healthy=False)]
    ports: dict[str, int | None] = {"w-1": children[0].port, "w-2": children[1].port}
    assert children_health(ports, "/healthz") == "w-2: no answer from Redis for 6.0s"
    children[1].healthy = True
    assert children_health(ports, "/healthz") is None
    assert children_health({**ports, "w-3": None}, "/readyz") == "w-3: starting"
