"""The Lua scripts speak the protocol `streamtasks.protocol` names: the same settle actions and
reply codes, and the same dead-letter fields, with nothing the Python side does not know of."""

from __future__ import annotations

import re
from importlib import resources

from streamtasks.deadletters import DeadLetter
from streamtasks.protocol import (
    DEAD_LETTER_FIELDS,
    GONE,
    REFUSED,
    REPLAY_FIELDS,
    SETTLED,
    Action,
    dead_letter_fields,
)


def _lua(name: str) -> str:
    return resources.files("streamtasks.lua").joinpath(f"{name}.lua").read_text()


def test_settle_lua_knows_exactly_the_named_actions() -> None:
    named = {Action.ACK, Action.RETRY, Action.DEAD_LETTER, Action.ACK_ON_RECEIPT}
    after_receipt = {Action.after_receipt(a) for a in named - {Action.ACK_ON_RECEIPT}}
    code = _lua("settle")
    compared = set(re.findall(r"\b(?:action|act) == '(\w)'", code))
    assert compared == named | after_receipt


def test_settle_lua_answers_only_the_named_codes() -> None:
    answers = {int(c) for c in re.findall(r"out\[#out \+ 1\] = (\d+)", _lua("settle"))}
    assert answers == {REFUSED, SETTLED, GONE}


def test_reclaim_lua_writes_the_dead_letter_fields_in_their_order() -> None:
    bury = re.search(r"bury\(KEYS\[1\], KEYS\[2\], id, \{(.*?)\}\)", _lua("reclaim"), re.S)
    assert bury is not None
    items = [item.strip() for item in bury.group(1).split(",")]  # name, value, name, ...
    assert tuple(name.strip("'") for name in items[0::2]) == DEAD_LETTER_FIELDS


def test_replay_lua_drops_every_field_a_dead_letter_or_a_replay_added() -> None:
    table = re.search(r"local dropped = \{(.*?)\}", _lua("replay"), re.S)
    assert table is not None
    dropped = set(re.findall(r"(\w+) = 1", table.group(1)))
    # `attempt` too: a replay starts the task's attempts over.
    assert dropped == {*DEAD_LETTER_FIELDS, *REPLAY_FIELDS, "attempt"}


def test_a_dead_letter_written_by_the_settler_reads_back_field_by_field() -> None:
    added = dead_letter_fields(
        error_type="CardDeclined",
        error="insufficient funds",
        traceback="Traceback ...",
        attempts=4,
        worker="w1",
        failed_at_ms=1_700_000_000_000,
        origin_stream="shop:{orders}",
        origin_id="1-0",
    )
    fields = {b"id": b"t1", b"task": b"charge"}
    fields.update({k.encode(): v.encode() for k, v in zip(added[::2], added[1::2], strict=True)})
    view = DeadLetter("9-0", fields, "orders").as_dict()
    assert (view["error_type"], view["error"], view["attempts"]) == (
        "CardDeclined",
        "insufficient funds",
        4,
    )
    assert (view["worker"], view["origin_id"]) == ("w1", "1-0")
    assert "deliveries" not in view  # only a worker's death counts deliveries
    assert view["fields"] == {}
