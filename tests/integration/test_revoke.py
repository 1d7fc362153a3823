"""Revocations on a real Redis: what they leave behind, and tasks acked on receipt."""

from __future__ import annotations

from streamtasks import App


def test_a_revoked_task_acked_on_receipt_is_acked_not_left_pending(redis_app: App) -> None:
    warm = redis_app.task(name="warm", acks_late=False)(lambda: "warm")
    result = warm.delay()
    result.revoke()
    redis_app.Worker().drain(timeout=10)

    assert result.status == "REVOKED"
    keys = redis_app.keys("default")
    assert redis_app.broker.backlog(keys) == (0, 0, 0), "nothing queued or pending is left"


def test_the_revoked_set_expires_with_its_newest_revocation(redis_app: App) -> None:
    task = redis_app.task(name="t")(lambda: None)
    task.delay().revoke()
    ttl_ms = redis_app.broker.client.pttl(redis_app.keys("default").revoked)
    assert 0 < ttl_ms <= redis_app.result_ttl * 1000
