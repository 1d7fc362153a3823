"""`python -m examples.blackfriday`: the sale's numbers, on the session's real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from tests.examples.conftest import ROOT, survivors
from tests.redis_server import RedisServer


def test_the_sale_sells_each_unit_once_and_charges_each_order_once(
    redis_server: RedisServer, run_example: Callable[..., dict[str, Any]]
) -> None:
    r = run_example("blackfriday", redis_server.url)

    # Every buyer clicked at least once; the repeat clicks were one order each.
    assert (r["requests"], r["buyers"], r["accepted"], r["duplicates_blocked"]) == (
        1000, 200, 200, 800
    )  # fmt: skip
    # 100 units, never oversold, none lost.
    assert (r["sold"], r["sold_out"], r["final_stock"]) == (100, 100, 0)
    # Every sold order was paid or declined for good; a declined card is never charged.
    assert r["paid"] + r["dead_lettered"] == r["sold"]
    assert 1 <= r["dead_lettered"] <= 16  # 16 of the 200 buyers carry a declined card
    assert r["dead_letter_reasons"] == {
        "Reject: card declined: insufficient funds": r["dead_lettered"]
    }
    assert r["charged"] == r["paid"]
    assert r["charged_twice"] == 0
    # About 30% of ~140 gateway calls time out: retried, never surfacing as failures.
    assert 10 <= r["retries"] <= 150
    # One worker was kill -9'd while running orders; the survivors finished them.
    assert r["killed_exit_code"] == -9
    assert r["killed_while_running"] >= 1
    assert r["recovered"] >= 1
    assert r["seconds"] < 30


def test_the_declined_cards_are_in_the_payments_dead_letter_stream(
    redis_server: RedisServer, run_example: Callable[..., dict[str, Any]]
) -> None:
    before = _dead_letters(redis_server.url)
    r = run_example("blackfriday", redis_server.url)

    new = _dead_letters(redis_server.url)[len(before) :]
    assert len(new) == r["dead_lettered"]
    for letter in new:
        assert letter["task"] == "blackfriday.charge_payment"
        assert letter["error_type"] == "Reject"
        assert letter["error"] == "card declined: insufficient funds"
        assert "{payments}" in letter["origin_stream"]
    # The example stopped every worker it started.
    assert survivors(f"streamtasks.demo:app --url {redis_server.url}") == []


def _dead_letters(url: str) -> list[dict[str, Any]]:
    """What `streamtasks dlq list` shows for the payments queue."""
    proc = subprocess.run(
        [sys.executable, "-m", "streamtasks", "dlq", "list", "-A", "streamtasks.demo:app",
         "-Q", "payments", "--url", url, "--json", "--limit", "10000"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    letters: list[dict[str, Any]] = json.loads(proc.stdout)
    return letters
