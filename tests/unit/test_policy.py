"""Retry and dead-letter policy as pure functions: no Redis, no clock, randomness injected."""

from __future__ import annotations

import pytest

from streamtasks import Reject, Retry, TaskRevoked
from streamtasks.policy import (
    DeadLetter,
    Failed,
    RetryLater,
    RetryPolicy,
    Revoked,
    Succeeded,
    backoff_delay,
    decide,
)


class GatewayTimeout(Exception):
    pass


def lowest() -> float:
    return 0.0


def highest() -> float:
    return 0.999999


@pytest.mark.parametrize("attempt", range(1, 9))
def test_backoff_without_jitter_doubles_from_the_base(attempt: int) -> None:
    assert backoff_delay(attempt, base=1.5, cap=1e9, jitter=False) == 1.5 * 2 ** (attempt - 1)


@pytest.mark.parametrize("attempt", range(1, 9))
def test_backoff_with_jitter_stays_in_the_upper_half(attempt: int) -> None:
    full = 2.0 * 2 ** (attempt - 1)
    low = backoff_delay(attempt, base=2.0, cap=1e9, jitter=True, rand=lowest)
    high = backoff_delay(attempt, base=2.0, cap=1e9, jitter=True, rand=highest)
    assert low == pytest.approx(full / 2)
    assert full / 2 <= high <= full
    assert high == pytest.approx(full, rel=1e-5)


def test_backoff_never_exceeds_the_cap_even_for_huge_attempts() -> None:
    assert backoff_delay(6, base=1.0, cap=10.0, jitter=False) == 10.0
    assert backoff_delay(10_000, base=1.0, cap=300.0, jitter=False) == 300.0
    assert backoff_delay(10_000, base=1.0, cap=300.0, jitter=True, rand=highest) <= 300.0
    assert backoff_delay(10_000, base=1.0, cap=300.0, jitter=True, rand=lowest) == 150.0


def test_backoff_uses_real_randomness_by_default() -> None:
    delays = {backoff_delay(4, base=1.0, cap=100.0, jitter=True) for _ in range(50)}
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(delays) > 1


def test_a_returned_value_succeeds() -> None:
    assert decide(RetryPolicy(), 1, None, {"ok": 1}) == Succeeded({"ok": 1})


def test_a_plain_exception_fails_without_retrying() -> None:
    outcome = decide(RetryPolicy(max_retries=5), 1, ValueError("bad order"))
    assert isinstance(outcome, Failed)
    assert (outcome.error.type_name, outcome.error.message) == ("ValueError", "bad order")


def test_an_autoretry_exception_retries_with_backoff() -> None:
    policy = RetryPolicy(max_retries=3, backoff=1.0, jitter=False, autoretry_for=(GatewayTimeout,))
    for attempt in (1, 2, 3):
        outcome = decide(policy, attempt, GatewayTimeout("slow"))
        assert outcome == RetryLater(2.0 ** (attempt - 1), outcome.error)  # type: ignore[union-attr]
        assert outcome.error.type_name == "GatewayTimeout"  # type: ignore[union-attr]


def test_subclasses_of_an_autoretry_exception_are_retried_too() -> None:
    class ReadTimeout(GatewayTimeout):
        pass

    policy = RetryPolicy(autoretry_for=(GatewayTimeout,), jitter=False)
    assert isinstance(decide(policy, 1, ReadTimeout()), RetryLater)


def test_jitter_is_drawn_from_the_injected_source() -> None:
    policy = RetryPolicy(backoff=4.0, jitter=True, autoretry_for=(GatewayTimeout,))
    low = decide(policy, 2, GatewayTimeout(), rand=lowest)
    high = decide(policy, 2, GatewayTimeout(), rand=highest)
    assert isinstance(low, RetryLater) and isinstance(high, RetryLater)
    assert low.delay == 4.0
    assert high.delay == pytest.approx(8.0, rel=1e-5)


def test_retry_countdown_overrides_the_backoff() -> None:
    outcome = decide(RetryPolicy(backoff=100.0), 1, Retry(countdown=2.5))
    assert isinstance(outcome, RetryLater)
    assert outcome.delay == 2.5


def test_retry_countdown_zero_is_honoured_not_replaced_by_backoff() -> None:
    outcome = decide(RetryPolicy(backoff=100.0), 1, Retry(countdown=0))
    assert isinstance(outcome, RetryLater)
    assert outcome.delay == 0


def test_retry_without_countdown_uses_the_backoff() -> None:
    outcome = decide(RetryPolicy(backoff=3.0, jitter=False), 3, Retry())
    assert isinstance(outcome, RetryLater)
    assert outcome.delay == 12.0


def test_retries_exhausted_go_to_the_dead_letter_stream() -> None:
    policy = RetryPolicy(max_retries=2, autoretry_for=(GatewayTimeout,))
    assert isinstance(decide(policy, 2, GatewayTimeout()), RetryLater)
    dead = decide(policy, 3, GatewayTimeout("still slow"))
    assert isinstance(dead, DeadLetter)
    assert dead.error.message == "gave up after 3 attempts: still slow"
    assert isinstance(decide(policy, 3, Retry()), DeadLetter)


def test_max_retries_zero_dead_letters_the_first_retry() -> None:
    assert isinstance(decide(RetryPolicy(max_retries=0), 1, Retry()), DeadLetter)


def test_reject_dead_letters_at_once_whatever_the_retries_left() -> None:
    outcome = decide(RetryPolicy(max_retries=10), 1, Reject("card declined"))
    assert isinstance(outcome, DeadLetter)
    assert (outcome.error.type_name, outcome.error.message) == ("Reject", "card declined")


def test_the_error_carries_the_traceback_text() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        outcome = decide(RetryPolicy(), 1, exc)
    assert isinstance(outcome, Failed)
    assert "Traceback" in outcome.error.traceback
    assert "ValueError: boom" in outcome.error.traceback


def test_a_task_that_raises_task_revoked_ends_revoked_not_failed() -> None:
    outcome = decide(RetryPolicy(), 1, TaskRevoked("stopped on request"))
    assert outcome == Revoked("stopped on request", ran=True)
