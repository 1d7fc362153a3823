"""How a worker or supervisor counts stop signals: one, a repeat, or a new one."""

from __future__ import annotations

from streamtasks.supervisor import Signals
from streamtasks.testing import ManualClock


def test_two_signals_within_a_second_are_one_and_a_later_one_is_another() -> None:
    clock = ManualClock(0.0)
    signals = Signals(window=1.0, clock=clock)
    assert signals.heard() == Signals.FIRST
    clock.advance(0.4)
    assert signals.heard() == Signals.REPEAT, "timeout(1) signals the worker and its group"
    clock.advance(0.6)
    assert signals.heard() == Signals.AGAIN
