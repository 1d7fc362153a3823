"""The supervisor's small decisions: how it counts stop signals (one, a repeat, or a new one),
and what it tells each child."""

from __future__ import annotations

from streamtasks.supervisor import Signals, _child_argv
from streamtasks.testing import ManualClock


def test_two_signals_within_a_second_are_one_and_a_later_one_is_another() -> None:
    clock = ManualClock(0.0)
    signals = Signals(window=1.0, clock=clock)
    assert signals.heard() == Signals.FIRST
    clock.advance(0.4)
    assert signals.heard() == Signals.REPEAT, "timeout(1) signals the worker and its group"
    clock.advance(0.6)
    assert signals.heard() == Signals.AGAIN


def test_a_child_gets_its_own_name_and_its_own_loopback_port_for_probes() -> None:
    parent = ["streamtasks", "worker", "-A", "shop:app", "-p", "4", "-n", "till"]
    parent += ["--metrics-port=9464", "--metrics-host", "0.0.0.0", "-c", "8"]

    child = _child_argv(parent, "till-2", probes=True)

    assert " ".join(child[3:]) == (
        "worker -A shop:app -c 8 --metrics-port 0 --metrics-host 127.0.0.1 -p 1 -n till-2"
    )
    assert "--metrics-port" not in _child_argv(parent, "till-2")
