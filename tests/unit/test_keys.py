"""Key names: one hash tag per queue (Redis Cluster safe) and names that cannot break it."""

from __future__ import annotations

import pytest

from streamtasks import App, ConfigurationError
from streamtasks.keys import QueueKeys, check_name


def hash_tag(key: str) -> str:
    return key[key.index("{") + 1 : key.index("}")]


def test_every_key_of_a_queue_shares_one_hash_tag_and_the_app_prefix() -> None:
    keys = QueueKeys("shop", "orders")
    all_keys = [
        keys.stream,
        keys.dead,
        keys.delayed,
        keys.result("t-1"),
        keys.idempotency("order:o-1"),
    ]
    assert len(set(all_keys)) == len(all_keys)
    assert {hash_tag(k) for k in all_keys} == {"orders"}
    assert all(k.startswith("shop:") for k in all_keys)


def test_two_apps_with_the_same_queue_name_do_not_share_keys() -> None:
    assert QueueKeys("shop", "orders").stream != QueueKeys("billing", "orders").stream


@pytest.mark.parametrize("name", ["orders", "orders-eu", "a.b_c:d", "Q1"])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert check_name("queue", name) == name


@pytest.mark.parametrize(
    "name", ["", "or{ders}", "orders}", "my queue", " orders", "orders\n", "tab\there", "é"]
)
def test_names_that_would_break_a_key_or_hash_tag_are_rejected(name: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        check_name("queue", name)


def test_an_app_or_queue_with_braces_is_rejected_where_the_user_names_it(app_name: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid app name"):
        App("sh{op}", url="memory://x")
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        App(app_name, url="memory://x", default_queue="a b")
    app = App(app_name, url="memory://x")
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        app.task(queue="{orders}")(lambda: None)
