"""The codec: values come back with the same type, value and time zone; a value that cannot go
is named by its path; garbage is refused with DecodeError; canonical bytes do not depend on
dict order or on the process's hash seed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections import OrderedDict, defaultdict, namedtuple
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import IntEnum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtasks.codec import MAX_NESTING, Codec, ExtCode
from streamtasks.errors import ConfigurationError, DecodeError, EncodeError

BERLIN = ZoneInfo("Europe/Berlin")
IST = timezone(timedelta(hours=5, minutes=30))


def shape(value: Any, *, sort_dicts: bool = False) -> str:
    """repr that also tells apart what == does not (tuple/list, tzinfo, fold, -0, NaN), with
    set elements sorted; fold is left out where it changes nothing (it cannot travel then)."""
    if isinstance(value, (set, frozenset)):
        inner = ", ".join(sorted(shape(item, sort_dicts=sort_dicts) for item in value))
        return f"{type(value).__name__}({{{inner}}})"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(shape(item, sort_dicts=sort_dicts) for item in value)
        return f"{type(value).__name__}([{inner}])"
    if isinstance(value, dict):
        items = [
            f"{shape(k, sort_dicts=sort_dicts)}: {shape(v, sort_dicts=sort_dicts)}"
            for k, v in value.items()
        ]
        return f"{type(value).__name__}({{{', '.join(sorted(items) if sort_dicts else items)}}})"
    if (
        isinstance(value, (datetime, time))
        and value.fold
        and value.replace(fold=0).utcoffset() == value.utcoffset()
    ):
        value = value.replace(fold=0)
    return repr(value)


def round_trip(value: Any, codec: Codec | None = None) -> Any:
    codec = codec or Codec()
    return codec.unpack(codec.pack(value))


def assert_exact(value: Any, codec: Codec | None = None) -> Any:
    back = round_trip(value, codec)
    assert shape(back) == shape(value)
    return back


# Round trips


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 11, 27, 9, 0, 0, 123456),
        datetime(2026, 11, 27, 9, tzinfo=timezone.utc),
        datetime(2026, 11, 27, 9, tzinfo=IST),
        datetime(2026, 11, 27, 9, tzinfo=timezone(timedelta(hours=-3, seconds=-15))),
        datetime(2026, 11, 27, 9, tzinfo=BERLIN),
        datetime(2026, 7, 1, 9, tzinfo=BERLIN),
        datetime.min,
        datetime.max,
        datetime(1, 1, 1, tzinfo=timezone.utc),
    ],
    ids=repr,
)
def test_a_datetime_comes_back_with_its_time_zone(value: datetime) -> None:
    back = assert_exact(value)
    assert back == value
    assert back.tzinfo == value.tzinfo
    assert back.utcoffset() == value.utcoffset()


def test_a_zoneinfo_datetime_keeps_the_zone_itself_not_only_todays_offset() -> None:
    back = round_trip(datetime(2026, 11, 27, 9, tzinfo=BERLIN))
    assert back.tzinfo is BERLIN
    assert back + timedelta(days=200) == datetime(2027, 6, 15, 9, tzinfo=BERLIN)
    assert (back + timedelta(days=200)).utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("fold", [0, 1])
def test_an_ambiguous_local_time_keeps_its_fold(fold: int) -> None:
    """02:30 on 2026-10-25 happens twice in Berlin: first at +02:00 (fold 0), then at +01:00."""
    value = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=fold)
    back = round_trip(value)
    assert back.fold == fold
    assert back.utcoffset() == timedelta(hours=2 - fold)
    assert back.timestamp() == value.timestamp()


@pytest.mark.parametrize("fold", [0, 1])
def test_a_skipped_local_time_keeps_its_wall_time_and_fold(fold: int) -> None:
    """02:30 on 2026-03-29 never happens in Berlin; Python still lets you hold it."""
    value = datetime(2026, 3, 29, 2, 30, tzinfo=BERLIN, fold=fold)
    back = round_trip(value)
    assert (back.hour, back.minute, back.fold, back.tzinfo) == (2, 30, fold, BERLIN)
    assert back.timestamp() == value.timestamp()


@pytest.mark.parametrize(
    "value",
    [
        date(2026, 2, 28),
        date.min,
        date.max,
        time(9, 30),
        time(23, 59, 59, 999999),
        time(9, 30, tzinfo=IST),
        time(9, 30, tzinfo=timezone.utc),
        time(9, 30, tzinfo=BERLIN),
        timedelta(0),
        timedelta(days=-1, seconds=5),
        -timedelta(microseconds=1),
        timedelta.max,
        timedelta.min,
        Decimal("1.10"),
        Decimal("-0"),
        Decimal("0E-7"),
        Decimal("1.5E+300"),
        Decimal("NaN"),
        Decimal("-sNaN12"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        Decimal("3.1415926535897932384626433832795028841971693993751"),
        UUID("12345678-1234-5678-1234-567812345678"),
        {1, "a", (2, 3)},
        set(),
        frozenset({frozenset({1}), "b"}),
        (),
        (1, (2, (3, [4, (5,)]))),
        b"\x00\xff",
        None,
        True,
        -(2**63),
        2**64 - 1,
        -0.0,
        float("inf"),
        "naïve ✓",
        {1: "int key", (1, "a"): "tuple key", None: 0, b"k": 1, frozenset({2}): 2},
        [datetime(2026, 1, 1, tzinfo=BERLIN), (date(2026, 1, 1), {Decimal("2.50")})],
    ],
    ids=repr,
)
def test_values_come_back_with_the_same_type_and_value(value: Any) -> None:
    assert_exact(value)


def test_a_time_keeps_its_offset_and_a_zone_its_name() -> None:
    assert round_trip(time(9, tzinfo=IST)).utcoffset() == timedelta(hours=5, minutes=30)
    assert round_trip(time(9, tzinfo=BERLIN)).tzinfo is BERLIN


def test_bytearray_and_memoryview_arrive_as_bytes() -> None:
    assert round_trip(bytearray(b"ab")) == b"ab"
    assert type(round_trip(bytearray(b"ab"))) is bytes
    assert round_trip(memoryview(b"ab")) == b"ab"


class Color(IntEnum):
    RED = 1


class Name(str):
    pass


Pair = namedtuple("Pair", "a b")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (OrderedDict([("b", 1), ("a", 2)]), {"b": 1, "a": 2}),
        (defaultdict(list, {"a": [1]}), {"a": [1]}),
        (Color.RED, 1),
        (Name("ada"), "ada"),
        (Pair(1, 2), (1, 2)),
    ],
    ids=repr,
)
def test_subclasses_of_built_in_types_arrive_as_the_built_in_type(
    value: Any, expected: Any
) -> None:
    assert_exact(expected)
    back = round_trip(value)
    assert type(back) is type(expected)
    assert back == expected


def test_a_datetime_subclass_arrives_as_a_datetime_written_by_the_base_isoformat() -> None:
    class Fancy(datetime):
        def isoformat(self, *args: Any, **kwargs: Any) -> str:
            return "the 27th"

    back = round_trip(Fancy(2026, 11, 27, tzinfo=BERLIN))
    assert type(back) is datetime
    assert back == datetime(2026, 11, 27, tzinfo=BERLIN)


# Exact bytes other languages read and write (docs/protocol.md)


@pytest.mark.parametrize(
    ("value", "payload"),
    [
        (
            datetime(2026, 11, 27, 9, tzinfo=BERLIN),
            (ExtCode.DATETIME, b"2026-11-27T09:00:00+01:00[Europe/Berlin]"),
        ),
        (datetime(2026, 11, 27, 9, 0, 0, 5), (ExtCode.DATETIME, b"2026-11-27T09:00:00.000005")),
        (datetime(2026, 11, 27, 9, tzinfo=IST), (ExtCode.DATETIME, b"2026-11-27T09:00:00+05:30")),
        (date(2026, 11, 27), (ExtCode.DATE, b"2026-11-27")),
        (time(9, 30, tzinfo=timezone.utc), (ExtCode.TIME, b"09:30:00+00:00")),
        (time(9, 30, tzinfo=BERLIN), (ExtCode.TIME, b"09:30:00[Europe/Berlin]")),
        (timedelta(days=-1, seconds=3, microseconds=4), (ExtCode.TIMEDELTA, b"\x93\xff\x03\x04")),
        (Decimal("-1.50E+3"), (ExtCode.DECIMAL, b"-1.50E+3")),
        (UUID(int=1), (ExtCode.UUID, b"\x00" * 15 + b"\x01")),
        ({7}, (ExtCode.SET, b"\x91\x07")),
        (frozenset({7}), (ExtCode.FROZENSET, b"\x91\x07")),
        ((1, "a"), (ExtCode.TUPLE, b"\x92\x01\xa1a")),
    ],
    ids=repr,
)
def test_each_type_is_the_documented_extension_payload(
    value: Any, payload: tuple[int, bytes]
) -> None:
    written = msgpack.packb(msgpack.ExtType(*payload))
    assert Codec().pack(value) == written
    assert shape(Codec().unpack(written)) == shape(value)


def test_a_registered_type_is_an_array_of_its_name_and_encoded_value() -> None:
    codec = shop_codec()
    data = codec.pack(Money(Decimal("9.99"), "EUR"))
    assert data == msgpack.packb(
        msgpack.ExtType(
            10, msgpack.packb(["shop.Money", {"amount": msgpack.ExtType(5, b"9.99"), "cur": "EUR"}])
        )
    )


def test_what_other_languages_write_is_read_too() -> None:
    codec = Codec()
    timestamp = msgpack.packb(msgpack.Timestamp(1_790_000_000, 123_456_000))
    assert codec.unpack(timestamp) == datetime(2026, 9, 21, 14, 13, 20, 123456, tzinfo=timezone.utc)
    assert codec.unpack(timestamp).tzinfo is timezone.utc
    zulu = msgpack.packb(msgpack.ExtType(1, b"2026-11-27T08:00:00Z"))
    assert codec.unpack(zulu) == datetime(2026, 11, 27, 8, tzinfo=timezone.utc)
    zoned = msgpack.packb(msgpack.ExtType(1, b"2026-11-27T08:00:00Z[Europe/Berlin]"))
    assert shape(codec.unpack(zoned)) == shape(datetime(2026, 11, 27, 9, tzinfo=BERLIN))


def test_an_unknown_zone_name_falls_back_to_the_written_offset() -> None:
    data = msgpack.packb(msgpack.ExtType(1, b"2026-11-27T09:00:00+01:00[Mars/Olympus_Mons]"))
    back = Codec().unpack(data)
    assert back.utcoffset() == timedelta(hours=1)
    assert back == datetime(2026, 11, 27, 8, tzinfo=timezone.utc)


def test_other_zone_data_on_the_reader_keeps_the_instant() -> None:
    """An offset the zone never had at that time (the sender's tzdata differs): the instant wins."""
    data = msgpack.packb(msgpack.ExtType(1, b"2026-11-27T09:00:00+03:00[Europe/Berlin]"))
    back = Codec().unpack(data)
    assert back.tzinfo is BERLIN
    assert back == datetime(2026, 11, 27, 6, tzinfo=timezone.utc)


# Registered types


class Money:
    def __init__(self, amount: Decimal, currency: str) -> None:
        self.amount, self.currency = amount, currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.amount, self.currency) == (
            other.amount,
            other.currency,
        )

    __hash__ = None  # type: ignore[assignment]


class Order:
    def __init__(self, placed: datetime, items: list[Any]) -> None:
        self.placed, self.items = placed, items


class Widget:
    pass


def shop_codec() -> Codec:
    codec = Codec()
    codec.register(
        Money,
        lambda m: {"amount": m.amount, "cur": m.currency},
        lambda d: Money(d["amount"], d["cur"]),
        name="shop.Money",
    )
    codec.register(
        Order,
        lambda o: {"placed": o.placed, "items": o.items},
        lambda d: Order(d["placed"], d["items"]),
    )
    return codec


def test_a_registered_type_round_trips_with_the_types_inside_it() -> None:
    codec = shop_codec()
    order = Order(datetime(2026, 11, 27, 9, tzinfo=BERLIN), [(1, Money(Decimal("9.99"), "EUR"))])
    back = round_trip({"order": order}, codec)["order"]
    assert type(back) is Order
    assert shape(back.placed) == shape(order.placed)
    assert back.items == [(1, Money(Decimal("9.99"), "EUR"))]
    assert type(back.items[0]) is tuple


def test_the_default_type_name_is_module_and_qualname() -> None:
    data = shop_codec().pack(Order(datetime(2026, 1, 1), []))
    assert f"{__name__}.Order".encode() in data


def test_a_registered_class_wins_over_the_built_in_handling_of_its_base() -> None:
    class Tags(frozenset[str]):
        pass

    codec = Codec()
    codec.register(Tags, sorted, lambda names: Tags(names))
    back = round_trip(Tags({"b", "a"}), codec)
    assert type(back) is Tags
    assert sorted(back) == ["a", "b"]


def test_subclasses_of_a_registered_class_use_the_first_registration_they_match() -> None:
    class Base:
        pass

    class Child(Base):
        pass

    codec = Codec()
    codec.register(Base, lambda b: "base", lambda v: Base(), name="base")
    codec.register(Child, lambda c: "child", lambda v: Child(), name="child")
    assert type(round_trip(Child(), codec)) is Child, "the exact class comes first"

    class Grandchild(Child):
        pass

    assert type(round_trip(Grandchild(), codec)) is Base, "then registration order"


@pytest.mark.parametrize("cls", [datetime, date, Decimal, UUID, tuple, set, dict, int, str, bytes])
def test_a_built_in_type_cannot_be_registered(cls: type) -> None:
    with pytest.raises(ConfigurationError, match="built in"):
        Codec().register(cls, str, str)


def test_a_type_name_or_class_cannot_be_registered_twice() -> None:
    codec = shop_codec()
    with pytest.raises(ConfigurationError, match=r"'shop\.Money' is already registered"):
        codec.register(Widget, str, str, name="shop.Money")
    with pytest.raises(ConfigurationError, match="Money is already registered"):
        codec.register(Money, str, str, name="shop.Money2")


def test_a_type_registered_only_by_the_sender_names_itself_and_the_fix() -> None:
    data = shop_codec().pack([Money(Decimal(1), "EUR")])
    with pytest.raises(DecodeError, match=r"'shop\.Money'.*app\.register_type"):
        Codec().unpack(data)


def test_a_failing_registered_decoder_is_a_decode_error() -> None:
    codec = Codec()
    codec.register(Widget, lambda w: 1, lambda v: 1 / 0, name="w")
    with pytest.raises(DecodeError, match="decoder registered for w raised ZeroDivisionError"):
        codec.unpack(codec.pack(Widget()))


# What cannot be encoded, and where it is


def call_error(args: Any = (), kwargs: Any = None, codec: Codec | None = None) -> str:
    with pytest.raises(EncodeError) as info:
        (codec or shop_codec()).pack_call(args, kwargs or {}, {})
    return str(info.value)


def test_an_unknown_argument_is_named_by_position_and_type() -> None:
    assert call_error((1, Widget())) == (
        "cannot encode args[1]: object of type Widget (register it with app.register_type)"
    )


def test_a_nested_keyword_argument_is_named_by_its_path() -> None:
    error = call_error(kwargs={"order": {"lines": [1, 2, 3, Widget()]}})
    assert error.startswith("cannot encode kwargs['order']['lines'][3]: object of type Widget")


def test_inside_a_registered_type_the_path_uses_attributes() -> None:
    order = Order(datetime(2026, 1, 1), [0, 1, 2, Widget()])
    assert call_error(kwargs={"order": order}) == (
        "cannot encode kwargs['order'].items[3]: object of type Widget "
        "(register it with app.register_type)"
    )


def test_paths_go_through_tuples_and_name_keys_and_set_elements() -> None:
    assert call_error(((0, [Widget()]),)).startswith("cannot encode args[0][1][0]: ")
    assert call_error(kwargs={"m": {Widget(): 1}}).startswith("cannot encode a key of kwargs['m']:")
    assert call_error(({(1, Widget())},)).startswith(
        "cannot encode an element of args[0]: object of type Widget"
    )


def test_an_int_msgpack_cannot_hold_is_named() -> None:
    assert call_error(kwargs={"n": [2**64]}) == (
        "cannot encode kwargs['n'][0]: an int outside msgpack's range, -2**63 to 2**64-1"
    )
    assert call_error(((-(2**63) - 1,),)).startswith("cannot encode args[0][0]: an int outside")


def test_a_value_that_contains_itself_is_an_encode_error_not_a_recursion_error() -> None:
    loop: list[Any] = [1]
    loop.append({"again": loop})
    assert call_error((loop,)) == (
        "cannot encode args[0][1]['again']: a list that contains itself (args[0])"
    )


def nested_tuples(depth: int) -> tuple[Any, ...]:
    value: tuple[Any, ...] = ()
    for _ in range(depth - 1):
        value = (value,)
    return value


def test_values_nested_past_the_bound_are_refused_where_they_pass_it() -> None:
    assert_exact(nested_tuples(MAX_NESTING))
    assert_exact([[[[[[nested_tuples(MAX_NESTING)]]]]]]), "lists and maps do not count"
    error = call_error((nested_tuples(MAX_NESTING + 1),))
    assert error == (
        f"cannot encode args[0]{'[0]' * MAX_NESTING}: more than {MAX_NESTING} tuples, sets and "
        "registered values nested in one another"
    )
    assert call_error((nested_tuples(sys.getrecursionlimit() + 10),)).startswith(
        "cannot encode args[0][0]"
    )
    with pytest.raises(EncodeError, match="nested in one another"):
        Codec().canonical(nested_tuples(MAX_NESTING + 1))


def test_an_encoder_that_raises_is_named() -> None:
    codec = Codec()
    codec.register(Widget, lambda w: w.missing, lambda v: v, name="w")
    assert call_error(kwargs={"w": Widget()}, codec=codec).startswith(
        "cannot encode kwargs['w']: the encoder registered for w raised AttributeError"
    )


def test_an_encoder_returning_its_own_argument_is_named() -> None:
    codec = Codec()
    codec.register(Widget, lambda w: w, lambda v: v, name="w")
    assert call_error((Widget(),), codec=codec) == (
        "cannot encode args[0]: a Widget that contains itself (args[0])"
    )


def test_a_time_zone_that_cannot_travel_is_refused_rather_than_changed() -> None:
    class Unknown(tzinfo):
        def utcoffset(self, dt: Any) -> None:
            return None

        def dst(self, dt: Any) -> None:
            return None

        def tzname(self, dt: Any) -> None:
            return None

    odd = timezone(timedelta(microseconds=1))
    assert call_error((time(9, tzinfo=Unknown()),)).startswith(
        "cannot encode args[0]: a tzinfo that gives no UTC offset"
    )
    assert call_error((datetime(2026, 1, 1, tzinfo=Unknown()),)).startswith(
        "cannot encode args[0]: a tzinfo that gives no UTC offset"
    )
    assert call_error(([datetime(2026, 1, 1, tzinfo=odd)],)).startswith(
        "cannot encode args[0][0]: a UTC offset with a fraction of a second"
    )


def test_a_bad_result_is_named_from_result() -> None:
    with pytest.raises(EncodeError, match=r"^cannot encode result\['rows'\]\[0\]: object of type"):
        Codec().pack({"rows": [Widget()]}, root="result")


def test_encode_error_is_a_type_error_and_a_message_for_the_call_has_no_path_prefix() -> None:
    with pytest.raises(TypeError):
        Codec().pack(Widget())
    error = call_error(kwargs={"headers": Widget()})
    assert error.startswith("cannot encode kwargs['headers']:"), "not ['kwargs']['headers']"


# Garbage in, DecodeError out


def ext(code: int, payload: bytes) -> bytes:
    """An ext 32 value: valid msgpack for any code, -1 included, and any payload length."""
    return (
        b"\xc9" + len(payload).to_bytes(4, "big") + code.to_bytes(1, "big", signed=True) + payload
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (ext(1, b"\xff\xfe"), "bad datetime"),
        (ext(1, b"next tuesday"), "bad datetime"),
        (ext(1, b"2026-02-30T00:00:00"), "bad datetime"),
        (ext(1, b"2026-11-27T09:00:00+01:00Europe/Berlin]"), "bad datetime"),
        (ext(2, b"27.11.2026"), "bad date"),
        (ext(3, b"25:00"), "bad time"),
        (ext(4, msgpack.packb([1, 2])), "bad timedelta"),
        (ext(4, msgpack.packb([1, 2, "3"])), "bad timedelta"),
        (ext(4, msgpack.packb([10**9, 0, 0])), "bad timedelta"),
        (ext(5, b"12,5"), "bad decimal"),
        (ext(6, b"\x01\x02\x03\x04\x05"), "bad uuid"),
        (ext(7, msgpack.packb([[1], [2]])), "bad set"),
        (ext(8, msgpack.packb({"a": 1})), "bad frozenset"),
        (ext(9, b"\xc1"), "bad tuple"),
        (ext(10, msgpack.packb(["x"])), "bad registered"),
        (ext(10, msgpack.packb(["no.such.Type", 1])), "unknown type 'no.such.Type'"),
        (ext(99, b""), "unknown msgpack extension type 99"),
        (ext(-1, b"\x00"), "not valid msgpack"),
        (b"\x92\x01", "not valid msgpack"),
        (b"\x01\x02", "not valid msgpack"),
        (b"\xa2\xff\xfe", "not valid msgpack"),
        (msgpack.packb({(1,): 1}, use_bin_type=True), "not valid msgpack"),
        (b"", "not valid msgpack"),
    ],
)
def test_garbage_is_refused_with_a_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        Codec().unpack(data)


def test_a_decimal_is_refused_even_where_the_context_would_turn_garbage_into_nan() -> None:
    import decimal

    with decimal.localcontext() as context:
        context.traps[decimal.InvalidOperation] = False
        with pytest.raises(DecodeError, match="bad decimal"):
            Codec().unpack(ext(5, b"abc"))


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        shop_codec().unpack(data)


@given(st.sampled_from([*range(-1, 12)]), st.binary(max_size=48))
def test_any_extension_payload_decodes_or_raises_decode_error(code: int, payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        shop_codec().unpack(ext(code, payload))


def nested_tuple_bytes(depth: int) -> bytes:
    data = ext(9, b"\x90")
    for _ in range(depth - 1):
        data = ext(9, b"\x91" + data)
    return data


def test_deep_nesting_in_received_bytes_is_a_decode_error_not_a_crash() -> None:
    """Each level is a nested unpack call; unbounded, they overflow the C stack (a segfault)."""
    assert Codec().unpack(nested_tuple_bytes(MAX_NESTING)) == nested_tuples(MAX_NESTING)
    with pytest.raises(DecodeError, match="nested in one another"):
        Codec().unpack(nested_tuple_bytes(MAX_NESTING + 1))
    with pytest.raises(DecodeError, match="nested in one another"):
        Codec().unpack(nested_tuple_bytes(5000))


def test_the_nesting_bound_leaves_room_on_a_small_thread_stack() -> None:
    results: list[Any] = []
    data = nested_tuple_bytes(MAX_NESTING)
    old = threading.stack_size(512 * 1024)
    try:
        thread = threading.Thread(target=lambda: results.append(Codec().unpack(data)))
        thread.start()
        thread.join()
    finally:
        threading.stack_size(old)
    assert results == [nested_tuples(MAX_NESTING)]


# Property: nested structures of every type round-trip exactly

zones = st.one_of(
    st.none(),
    st.just(timezone.utc),
    st.integers(-86399, 86399).map(lambda seconds: timezone(timedelta(seconds=seconds))),
    st.timezones(),
)
hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.datetimes(timezones=zones),
    st.dates(),
    st.times(timezones=st.one_of(st.none(), st.just(timezone.utc), st.just(IST), st.just(BERLIN))),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.one_of(
        st.tuples(inner, inner), st.frozensets(inner, max_size=3), st.lists(inner).map(tuple)
    ),
    max_leaves=6,
)
leaves = st.one_of(hashable_leaves, st.floats(), st.decimals())  # with NaN, even signalling
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=20,
)


@settings(deadline=None)
@given(values)
def test_nested_values_round_trip_exactly(value: Any) -> None:
    assert_exact(value)


@settings(deadline=None)
@given(values)
def test_nested_values_round_trip_exactly_inside_a_registered_type(value: Any) -> None:
    class Box:
        def __init__(self, content: Any) -> None:
            self.content = content

    codec = Codec()
    codec.register(Box, lambda b: {"content": b.content}, lambda d: Box(d["content"]))
    back = round_trip([Box(value)], codec)[0]
    assert type(back) is Box
    assert shape(back.content) == shape(value)


# Canonical bytes


@settings(deadline=None)
@given(values)
def test_canonical_bytes_decode_to_the_value(value: Any) -> None:
    codec = Codec()
    assert shape(codec.unpack(codec.canonical(value)), sort_dicts=True) == shape(
        value, sort_dicts=True
    )


def reordered(value: Any) -> Any:
    """An equal value built in another order: dicts reversed, sets rebuilt from reversed lists."""
    if isinstance(value, dict):
        return {k: reordered(v) for k, v in reversed(list(value.items()))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    if isinstance(value, tuple):
        return tuple(reordered(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return type(value)(reversed([reordered(item) for item in value]))
    return value


@settings(deadline=None)
@given(values)
def test_canonical_bytes_do_not_depend_on_insertion_order(value: Any) -> None:
    codec = Codec()
    assert codec.canonical(reordered(value)) == codec.canonical(value)


def test_canonical_bytes_of_equal_dicts_are_equal() -> None:
    codec = Codec()
    assert codec.canonical({"a": 1, "b": 2}) == codec.canonical({"b": 2, "a": 1})
    assert codec.canonical({"a": 1, "b": 2}) != codec.canonical({"a": 2, "b": 1})
    assert codec.pack({"a": 1, "b": 2}) != codec.pack({"b": 2, "a": 1}), "pack keeps order"


def test_canonical_bytes_of_a_registered_type_sort_what_it_encodes_to() -> None:
    codec = shop_codec()
    a = Order(datetime(2026, 1, 1), [{"y": 1, "x": {"p", "q"}}])
    b = Order(datetime(2026, 1, 1), [{"x": {"q", "p"}, "y": 1}])
    assert codec.canonical(a) == codec.canonical(b)


def test_canonical_refuses_what_pack_refuses_and_names_it() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError, match=r"^cannot encode value\['k'\]: object of type Widget"):
        Codec().canonical({"k": Widget()})
    with pytest.raises(EncodeError, match="contains itself"):
        Codec().canonical(loop)


SEEDED = """
import sys
from streamtasks.codec import Codec
words = {f"word{i}" for i in range(40)}
value = {"tags": words, "nested": frozenset({("a", frozenset(words))})}
print(Codec().canonical(value).hex(), Codec().pack(words).hex())
"""


def run_with_hash_seed(seed: str) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", SEEDED], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_canonical_bytes_are_the_same_in_processes_with_different_hash_seeds() -> None:
    (canonical_1, packed_1), (canonical_2, packed_2) = map(run_with_hash_seed, ["1", "2"])
    assert packed_1 != packed_2, "string sets iterate in another order under another seed"
    assert canonical_1 == canonical_2


# Speed-related contract: plain calls take the fast path


def test_a_plain_call_packs_to_the_same_bytes_as_plain_msgpack() -> None:
    call = {"args": [1, "x", b"b", None, 1.5, [True]], "kwargs": {"k": {"n": 2}}, "headers": {}}
    expected = msgpack.packb(call, use_bin_type=True)
    codec = Codec()
    assert codec.pack(call) == expected
    assert codec.pack_call((1, "x", b"b", None, 1.5, [True]), {"k": {"n": 2}}, {}) == expected


def test_packing_is_reentrant_from_an_encoder() -> None:
    codec = Codec()
    inner: list[Callable[[Any], bytes]] = [codec.pack]
    codec.register(Widget, lambda w: inner[0]((1, 2)), lambda v: codec.unpack(v), name="w")
    assert round_trip([Widget(), (3,)], codec) == [(1, 2), (3,)]
