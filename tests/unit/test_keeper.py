"""The keeper driven by hand: each `tick(now)` runs exactly the jobs due at `now`, delayed messages
are promoted when the app's clock says they are due, and a job paused by an outage runs at the
first tick after Redis answers again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streamtasks import App, BrokerUnavailable
from streamtasks.broker import Reclaimed
from streamtasks.keeper import Keeper
from streamtasks.keys import QueueKeys
from streamtasks.outcome import Delivery
from streamtasks.retrying import Outage
from streamtasks.runs import Io
from streamtasks.testing import ManualClock


@dataclass
class Held:
    """A worker run as the keeper sees it, counting what the keeper asks of it."""

    app: App
    name: str = "w1"
    outage: Outage = field(default_factory=lambda: Outage("worker w1"))
    block: float = 0.05
    promote_interval: float = 60.0
    reclaim_interval: float = 1.0
    lease_every: float = 10.0
    prune_idle: float = 3600.0
    keys: dict[str, QueueKeys] = field(init=False)
    asked: list[str] = field(default_factory=list)
    redis_down: bool = False

    def __post_init__(self) -> None:
        queue = self.app.keys("default")
        self.keys = {queue.stream: queue}

    def hurried(self) -> bool:
        return False

    def stopping(self) -> bool:
        return False

    def free_room(self) -> int:
        return 10

    def reclaim(self, keys: QueueKeys, cursor: str, limit: int) -> Reclaimed:
        self.asked.append("reclaim")
        if self.redis_down:
            raise BrokerUnavailable("Redis unreachable: connection refused")
        return Reclaimed("-", [], [])

    def renewable(self) -> list[tuple[QueueKeys, list[Delivery]]]:
        self.asked.append("lease")
        return []

    def stop_revoked(self, io: Io) -> None:
        self.asked.append("revoked")

    def beat(self) -> None:
        self.asked.append("beat")

    def heard(self, renewed: int = 0) -> None:
        pass

    def measure_queues(self, io: Io) -> None:
        pass


def test_each_tick_runs_the_jobs_due_then_and_says_when_the_next_one_is(
    make_memory_app: Any,
) -> None:
    held = Held(make_memory_app())
    keeper = Keeper(held, now=100.0)

    assert keeper.tick(100.0) == 1.0  # promotion at once; reclaim is next, in 1 s
    assert held.asked == []
    keeper.tick(101.0)
    assert held.asked == ["reclaim", "revoked"]
    keeper.tick(110.0)
    assert held.asked == ["reclaim", "revoked", "reclaim", "lease", "revoked", "beat"]


def test_a_delayed_message_is_promoted_at_the_first_tick_after_it_is_due(
    make_memory_app: Any,
) -> None:
    clock = ManualClock()
    app: App = make_memory_app(clock=clock)
    ping = app.task(name="ping")(lambda: "pong")
    ping.apply_async(countdown=30)  # waiting when the worker starts
    keeper = Keeper(Held(app), now=0.0)
    assert keeper.tick(0.0) == 1.0  # promotes nothing yet, learns when the message is due
    assert app.broker.backlog(app.keys("default"))[0] == 0

    clock.advance(29.9)
    keeper.tick(29.9)
    assert app.broker.backlog(app.keys("default"))[0] == 0
    clock.advance(0.1)
    keeper.tick(30.0)
    assert app.broker.backlog(app.keys("default"))[0] == 1


def test_a_job_paused_by_an_outage_runs_at_the_first_tick_after_redis_answers(
    make_memory_app: Any,
) -> None:
    held = Held(make_memory_app(), redis_down=True)
    keeper = Keeper(held, now=0.0)
    keeper.tick(1.0)
    assert held.asked.count("reclaim") == 1 and held.outage.down
    keeper.tick(2.0)
    assert held.asked.count("reclaim") == 1, "backing off while Redis is down"

    held.redis_down = False
    held.outage.recovered()
    keeper.tick(2.1)
    assert held.asked.count("reclaim") == 2


def test_after_a_pause_longer_than_a_records_life_the_beat_comes_first(
    make_memory_app: Any,
) -> None:
    held = Held(make_memory_app())
    keeper = Keeper(held, now=0.0)
    keeper.tick(0.0)

    keeper.tick(30.0)  # SIGSTOPped for 30 s: its name may be another worker's now
    assert held.asked[0] == "beat"
