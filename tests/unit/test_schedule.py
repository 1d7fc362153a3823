"""When the keeper promotes delayed messages: a pure schedule, driven here with injected times."""

from __future__ import annotations

import pytest

from streamtasks.schedule import PromoteSchedule

T0 = 1_700_000_000_000  # wall-clock ms


def schedule(fallback: float = 1.0, gap: float = 0.02) -> PromoteSchedule:
    return PromoteSchedule(["orders", "payments"], fallback=fallback, gap=gap)


def test_a_new_worker_promotes_every_queue_at_once() -> None:
    s = schedule()
    assert s.due(0.0, T0) == ["orders", "payments"]
    assert s.wait(0.0, T0) == 0.0


def test_a_queue_is_promoted_when_its_next_message_comes_due() -> None:
    s = schedule(fallback=60.0)
    s.promoted("orders", 0.0, T0 + 5_000)
    s.promoted("payments", 0.0, None)
    assert s.due(4.9, T0 + 4_900) == []
    assert s.wait(0.0, T0) == pytest.approx(5.0)
    assert s.due(5.0, T0 + 5_000) == ["orders"]


def test_an_announced_sooner_due_time_brings_the_promotion_forward() -> None:
    s = schedule(fallback=60.0)
    s.promoted("orders", 0.0, T0 + 30_000)
    s.promoted("payments", 0.0, None)
    s.announced("orders", T0 + 40_000)  # later than known: changes nothing
    assert s.wait(1.0, T0 + 1_000) == pytest.approx(29.0)
    s.announced("payments", T0 + 2_000)
    assert s.wait(1.0, T0 + 1_000) == pytest.approx(1.0)
    assert s.due(3.0, T0 + 3_000) == ["payments"]


def test_with_nothing_known_a_queue_is_still_promoted_every_fallback_seconds() -> None:
    """For messages added to the delayed set without a wake-up (by hand, other languages)."""
    s = schedule(fallback=1.0)
    s.promoted("orders", 0.0, None)
    s.promoted("payments", 0.5, T0 + 600_000)
    assert s.due(0.9, T0 + 900) == []
    assert s.wait(0.9, T0 + 900) == pytest.approx(0.1)
    assert s.due(1.0, T0 + 1_000) == ["orders"]
    assert s.due(1.5, T0 + 1_500) == ["orders", "payments"]


def test_overdue_messages_are_promoted_at_most_once_per_gap() -> None:
    """promote moves a bounded batch; with more already due it is called again, but a dense run
    of due times costs a call per gap, not one per message."""
    s = schedule(gap=0.02)
    s.promoted("orders", 10.0, T0)
    s.promoted("payments", 10.0, None)
    assert s.due(10.01, T0 + 10) == []
    assert s.wait(10.01, T0 + 10) == pytest.approx(0.01)
    assert s.due(10.025, T0 + 25) == ["orders"]
