"""The wire format: what encode writes, and every way decode refuses an entry."""

from __future__ import annotations

import msgpack
import pytest

from streamtasks import DecodeError, EncodeError
from streamtasks.message import SCHEMA_VERSION, Message, decode, encode


def as_entry(fields: dict[str, bytes | str]) -> dict[bytes, bytes]:
    """Fields as redis-py hands them to a consumer: bytes keys and values."""
    return {k.encode(): v.encode() if isinstance(v, str) else v for k, v in fields.items()}


def valid_fields(**overrides: bytes | str) -> dict[bytes, bytes]:
    fields: dict[str, bytes | str] = {
        "schema_version": "1",
        "id": "abc",
        "task": "shop.ping",
        "call": msgpack.packb({"args": [1], "kwargs": {"a": 2}, "headers": {}}),
    }
    fields.update(overrides)
    return as_entry(fields)


def test_a_message_round_trips_through_its_fields() -> None:
    message = Message(
        "id-1",
        "shop.place_order",
        ("o-1", 2),
        {"user": "u-1"},
        {"trace": "t"},
        attempt=2,
        idempotency_key="order:o-1",
    )
    fields = encode(message)
    assert fields["schema_version"] == SCHEMA_VERSION == "2"
    assert decode(as_entry(fields)) == message


def test_a_plain_xadd_from_another_language_is_readable() -> None:
    """docs/protocol.md promises that a producer needs only these four fields."""
    message = decode(valid_fields())
    assert (message.id, message.task, message.args, message.kwargs) == (
        "abc",
        "shop.ping",
        (1,),
        {"a": 2},
    )
    assert message.attempt == 1
    assert message.idempotency_key is None


def test_unencodable_arguments_raise_encode_error_which_is_a_type_error() -> None:
    with pytest.raises(EncodeError) as info:
        encode(Message("id", "t", (object(),)))
    assert isinstance(info.value, TypeError)


def test_a_message_over_the_size_limit_is_refused_with_advice() -> None:
    message = Message("id", "t", ("x" * 2000,))
    with pytest.raises(EncodeError, match="over the limit of 1000"):
        encode(message, max_bytes=1000)
    assert encode(message, max_bytes=4000)["task"] == "t"


def test_missing_schema_version_says_it_is_not_a_streamtasks_message() -> None:
    fields = valid_fields()
    del fields[b"schema_version"]
    with pytest.raises(DecodeError, match="no schema_version"):
        decode(fields)


def test_unknown_schema_version_names_the_versions_read() -> None:
    with pytest.raises(DecodeError, match=r"unknown schema_version b'3'.*'1' and '2'"):
        decode(valid_fields(schema_version="3"))


def test_a_version_1_entry_counted_its_attempts_from_0() -> None:
    assert decode(valid_fields(schema_version="1")).attempt == 1
    assert decode(valid_fields(schema_version="1", attempt="2")).attempt == 3
    assert decode(valid_fields(schema_version="2", attempt="2")).attempt == 2


def test_an_attempt_below_1_is_refused() -> None:
    with pytest.raises(DecodeError, match="'attempt' must be 1 or more, not 0"):
        decode(valid_fields(schema_version="2", attempt="0"))


def test_a_call_that_is_not_msgpack_is_refused() -> None:
    with pytest.raises(DecodeError, match="field 'call': not valid msgpack"):
        decode(valid_fields(call=b"\xc1\xc1\xc1"))


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (msgpack.packb([1, 2]), "must be a msgpack map"),
        (msgpack.packb({"args": {"a": 1}}), "args as an array"),
        (msgpack.packb({"args": [], "kwargs": [1]}), "kwargs, headers as maps"),
        (msgpack.packb({"args": [], "headers": "h"}), "kwargs, headers as maps"),
        (msgpack.packb({"args": [], "kwargs": {1: "x"}}), "kwargs name that is not a string"),
    ],
)
def test_a_call_of_the_wrong_shape_is_refused(call: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(valid_fields(call=call))


@pytest.mark.parametrize("missing", ["id", "task", "call"])
def test_a_missing_required_field_is_named(missing: str) -> None:
    fields = valid_fields()
    del fields[missing.encode()]
    with pytest.raises(DecodeError, match=f"missing field '{missing}'"):
        decode(fields)


def test_a_task_name_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(DecodeError, match="not UTF-8"):
        decode(valid_fields(task=b"\xff\xfe"))


def test_an_idempotency_key_that_is_not_utf8_is_refused_not_mangled_into_another() -> None:
    with pytest.raises(DecodeError, match="'idempotency_key' is not UTF-8"):
        decode(valid_fields(idempotency_key=b"order-\xff"))


def test_an_attempt_that_is_not_an_integer_is_refused() -> None:
    with pytest.raises(DecodeError, match="'attempt' is not an integer"):
        decode(valid_fields(attempt="two"))
