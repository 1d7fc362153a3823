"""The pytest plugin as a user meets it: their own project and test suite, run by pytest in a
subprocess, with only `streamtasks_app` set in their pyproject.toml."""

from __future__ import annotations

import textwrap

import pytest

SHOP = """
from streamtasks import App, Retry, current_task

# Nothing listens on port 1: a test that reached this app's real Redis would fail at once.
app = App("shop", url="redis://127.0.0.1:1/0", enqueue_timeout=0.5)
LEDGER = []


class GatewayTimeout(Exception):
    pass


@app.task(queue="orders")
def place_order(order_id: str, qty: int) -> dict:
    charge.delay(order_id, 100 * qty)
    return {"order": order_id, "status": "accepted"}


@app.task(
    queue="payments",
    autoretry_for=(GatewayTimeout,),
    max_retries=3,
    retry_backoff=3600.0,
    retry_backoff_max=7200.0,
    idempotency_key=lambda order_id, cents: f"charge:{order_id}",
)
def charge(order_id: str, cents: int) -> str:
    LEDGER.append((order_id, cents, current_task().attempt))
    if order_id.startswith("slow") and current_task().attempt < 3:
        raise GatewayTimeout()
    return f"ch_{order_id}"


@app.task(queue="orders")
def send_receipt(order_id: str) -> None:
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(shop=SHOP)
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\nstreamtasks_app = "shop:app"\n')
    return pytester


def run(project: pytest.Pytester, tests: str, passed: int) -> pytest.RunResult:
    project.makepyfile(test_shop="from shop import *\n" + textwrap.dedent(tests))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=passed)
    return result


def test_drain_runs_what_is_queued_and_what_it_enqueues(project: pytest.Pytester) -> None:
    run(
        project,
        """
        def test_place_order(streamtasks):
            LEDGER.clear()
            result = place_order.delay("o-1", 2)
            assert [(e.task, e.args) for e in streamtasks.enqueued()] == [
                ("shop.place_order", ("o-1", 2))
            ]
            runs = streamtasks.drain()
            assert [(r.task, r.status) for r in runs] == [
                ("shop.place_order", "SUCCESS"),
                ("shop.charge", "SUCCESS"),
            ]
            assert result.get(timeout=0) == {"order": "o-1", "status": "accepted"}
            assert LEDGER == [("o-1", 200, 1)]
            assert streamtasks.enqueued() == []
        """,
        passed=1,
    )


def test_retries_and_delayed_tasks_run_on_the_clock_without_sleeping(
    project: pytest.Pytester,
) -> None:
    run(
        project,
        """
        def test_retries(streamtasks):
            LEDGER.clear()
            start = streamtasks.clock()
            result = charge.delay("slow-1", 500)
            runs = streamtasks.drain()
            assert [r.status for r in runs] == ["RETRY", "RETRY", "SUCCESS"]
            assert result.get(timeout=0) == "ch_slow-1"
            assert streamtasks.clock() - start >= 3600 * 1.5, "backoffs of an hour passed"

        def test_delayed(streamtasks):
            send_receipt.apply_async(("o-1",), countdown=86_400)
            [waiting] = streamtasks.enqueued(send_receipt)
            assert waiting.due is not None
            assert streamtasks.drain(advance=False) == []
            streamtasks.advance(86_400)
            assert [r.task for r in streamtasks.drain(advance=False)] == ["shop.send_receipt"]
        """,
        passed=2,
    )


def test_expiry_and_revocation_on_the_injected_clock(project: pytest.Pytester) -> None:
    run(
        project,
        """
        import pytest
        from streamtasks import TaskRevoked

        def test_expires(streamtasks):
            stale = send_receipt.apply_async(("o-1",), expires=60)
            streamtasks.advance(61)
            assert [r.status for r in streamtasks.drain()] == ["REVOKED"]
            with pytest.raises(TaskRevoked, match="expired"):
                stale.get(timeout=0)

        def test_revoked(streamtasks):
            result = send_receipt.delay("o-2")
            result.revoke()
            assert [r.status for r in streamtasks.drain()] == ["REVOKED"]
        """,
        passed=2,
    )


def test_each_test_starts_empty(project: pytest.Pytester) -> None:
    run(
        project,
        """
        def test_first(streamtasks):
            place_order.delay("o-1", 1)
            charge.delay("o-9", 100)

        def test_second(streamtasks):
            assert streamtasks.enqueued() == []
            charge.delay("o-9", 999)  # the key from the first test is gone with its Redis
        """,
        passed=2,
    )


def test_a_killed_run_is_redelivered_on_the_next_drain_until_max_deliveries(
    project: pytest.Pytester,
) -> None:
    run(
        project,
        """
        def test_killed_once(streamtasks):
            LEDGER.clear()
            result = charge.delay("o-1", 100)
            streamtasks.kill_next(charge)
            assert [r.status for r in streamtasks.drain()] == ["KILLED"]
            assert result.status == "PENDING"
            assert [r.status for r in streamtasks.drain()] == ["SUCCESS"]
            assert LEDGER == [("o-1", 100, 1), ("o-1", 100, 1)], "the same attempt, twice"

        def test_killed_every_time(streamtasks):
            result = charge.delay("o-2", 100)
            for _ in range(5):  # App max_deliveries
                streamtasks.kill_next(charge)
                streamtasks.drain()
            [dead] = streamtasks.drain()
            assert (dead.task, dead.id, dead.status) == ("shop.charge", result.id, "DEAD")
            assert result.status == "DEAD"
            [dead] = streamtasks.app.dead_letters("payments").list()
            assert dead.get("error_type") == "MaxDeliveriesExceeded"
        """,
        passed=2,
    )


def test_an_expired_lease_runs_the_task_again_and_refuses_the_first_outcome(
    project: pytest.Pytester,
) -> None:
    run(
        project,
        """
        def test_lease(streamtasks):
            LEDGER.clear()
            result = charge.delay("o-1", 100)
            streamtasks.expire_lease_next(charge)
            assert [r.status for r in streamtasks.drain()] == ["REFUSED", "SUCCESS"]
            assert len(LEDGER) == 2
            assert result.get(timeout=0) == "ch_o-1"
        """,
        passed=1,
    )


def test_redis_down_for_a_few_calls_is_ridden_out_and_for_longer_is_an_error(
    project: pytest.Pytester,
) -> None:
    run(
        project,
        """
        import pytest
        from streamtasks import BrokerUnavailable

        def test_outage(streamtasks):
            streamtasks.redis_down(calls=2)
            result = place_order.delay("o-1", 1)
            streamtasks.redis_down(calls=3)
            streamtasks.drain()
            assert result.get(timeout=0)["status"] == "accepted"

            before = streamtasks.clock()
            streamtasks.redis_down(calls=10_000)
            with pytest.raises(BrokerUnavailable):
                place_order.delay("o-2", 1)
            assert streamtasks.clock() - before >= app.enqueue_timeout, "waited on the clock"

        def test_next(streamtasks, caplog):
            place_order.delay("o-3", 1)
            assert "reachable again" not in caplog.text, "no outage left from the last test"
        """,
        passed=2,
    )


def test_a_call_sent_to_another_queue_is_seen_and_run(project: pytest.Pytester) -> None:
    run(
        project,
        """
        def test_rush(streamtasks):
            send_receipt.apply_async(("o-1",), queue="rush")
            [waiting] = streamtasks.enqueued(queue="rush")
            assert waiting.task == "shop.send_receipt"
            assert [(r.queue, r.status) for r in streamtasks.drain()] == [("rush", "SUCCESS")]
        """,
        passed=1,
    )


def test_without_the_ini_option_the_fixture_says_what_to_set(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(streamtasks):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*streamtasks_app = 'module:app'*"])
    assert result.ret != 0
