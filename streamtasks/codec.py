"""The codec: how task arguments and results become msgpack bytes and come back with the same types.

Plain msgpack carries nil, bool, int, float, str, bin, array and map. The extension types in
`ExtCode` carry the other values tasks are commonly called with, and the types an app registers;
docs/protocol.md ("Types inside `call` and results") gives their bytes for other languages.
"""

from __future__ import annotations

import reprlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation, localcontext
from enum import IntEnum
from functools import partial
from typing import Any, NamedTuple
from uuid import UUID
from zoneinfo import ZoneInfo

import msgpack

from streamtasks.errors import ConfigurationError, DecodeError, EncodeError

__all__ = ["MAX_NESTING", "Codec", "ExtCode"]


class ExtCode(IntEnum):
    """msgpack extension type codes; 0-63 are reserved for streamtasks."""

    DATETIME = 1
    DATE = 2
    TIME = 3
    TIMEDELTA = 4
    DECIMAL = 5
    UUID = 6
    SET = 7
    FROZENSET = 8
    TUPLE = 9
    REGISTERED = 10


def _tagged(code: int, data: bytes) -> Any:
    """msgpack.ExtType without its argument checks, which cost more than the rest of encoding
    a datetime; code and data here are always valid."""
    return tuple.__new__(msgpack.ExtType, (code, data))


# What msgpack writes itself under strict_types, so `default` never sees these exact types.
_NATIVE = frozenset(
    {type(None), bool, int, float, str, bytes, bytearray, memoryview, list, dict}
    | {msgpack.ExtType, msgpack.Timestamp}
)
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1

# Tuples, sets and registered values each pack their content into a payload of its own, so each
# level inside another is a nested (un)pack call; unpackb's C frame holds a ~40 KiB parse stack,
# and nesting without a bound crashes the process (a segfault, not an exception). The first few
# levels use unpackb for speed, deeper ones an Unpacker (parse stack on the heap), up to a bound
# that pack enforces too.
MAX_NESTING = 64
_FAST_NESTING = 4
_TOO_DEEP = f"more than {MAX_NESTING} tuples, sets and registered values nested in one another"


class _Depth(threading.local):
    """How many of those nested calls this thread is inside (the C stack is per thread)."""

    n = 0


_depth = _Depth()


def _zone(value: datetime | time) -> str:
    """The `[name]` suffix that keeps an IANA zone (not just today's offset) across the wire.

    Raises for a tzinfo that would not come back: one that gives no UTC offset (isoformat then
    writes a naive time) or an offset with microseconds (fromisoformat drops them, on 3.11).
    """
    tz = value.tzinfo
    if tz is None:
        return ""
    suffix = f"[{tz.key}]" if isinstance(tz, ZoneInfo) and tz.key else ""
    offset = value.utcoffset()
    if offset is None and not suffix:
        raise ValueError(f"a tzinfo that gives no UTC offset ({tz!r}) cannot be encoded")
    if offset is not None and offset.microseconds:
        raise ValueError(f"a UTC offset with a fraction of a second ({offset}) cannot be encoded")
    return suffix


def _encode_datetime(value: datetime) -> Any:
    # Base-class methods throughout, so a subclass overriding isoformat or __str__ cannot write
    # text that the reader (or Python 3.10's strict fromisoformat) does not understand.
    return _tagged(ExtCode.DATETIME, (datetime.isoformat(value) + _zone(value)).encode())


def _encode_time(value: time) -> Any:
    return _tagged(ExtCode.TIME, (time.isoformat(value) + _zone(value)).encode())


def _encode_timedelta(value: timedelta) -> Any:
    payload = msgpack.packb([value.days, value.seconds, value.microseconds])
    return _tagged(ExtCode.TIMEDELTA, payload)


# In isinstance order (datetime before date): a subclass of one of these, not registered itself,
# goes as its base type. The first seven are written natively once converted.
_BASES: dict[type, Callable[[Any], Any]] = {
    dict: dict,
    list: list,
    int: int.__int__,
    float: float.__float__,
    str: str.__str__,
    bytes: bytes,
    bytearray: bytes,
    datetime: _encode_datetime,
    date: lambda value: _tagged(ExtCode.DATE, date.isoformat(value).encode()),
    time: _encode_time,
    timedelta: _encode_timedelta,
    Decimal: lambda value: _tagged(ExtCode.DECIMAL, Decimal.__str__(value).encode()),
    UUID: lambda value: _tagged(ExtCode.UUID, value.bytes),
}
_CONTAINERS = (tuple, set, frozenset)
_BUILT_IN = _NATIVE | _BASES.keys() | set(_CONTAINERS)


def _split_zone(text: str) -> tuple[str, ZoneInfo | None]:
    """ISO text without its `[zone]` suffix, and the zone (None if absent or not known here)."""
    if not text.endswith("]"):
        return text, None
    start = text.rfind("[")
    if start < 0:
        raise ValueError(f"unbalanced ']' in {text!r}")
    try:
        zone = ZoneInfo(text[start + 1 : -1])
    except (KeyError, ValueError, OSError):  # unknown here: the offset still gives the instant
        zone = None
    return text[:start], zone


def _utc_z(text: str) -> str:
    # Python 3.10's fromisoformat reads only what isoformat writes, which never ends in Z.
    return text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text


def _decode_datetime(data: bytes) -> datetime:
    text, zone = _split_zone(data.decode())
    value = datetime.fromisoformat(_utc_z(text))
    if zone is None:
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=zone)
    # Keep the wall time and pick the fold whose offset was written: exact for ambiguous and
    # skipped (DST gap) local times alike. Only if this host's zone data disagree with the
    # sender's does the instant win.
    offset = value.utcoffset()
    for fold in (0, 1):
        local = value.replace(tzinfo=zone, fold=fold)
        if local.utcoffset() == offset:
            return local
    return value.astimezone(zone)


def _decode_time(data: bytes) -> time:
    text, zone = _split_zone(data.decode())
    value = time.fromisoformat(_utc_z(text))
    return value if zone is None else value.replace(tzinfo=zone)


def _decode_timedelta(data: bytes) -> timedelta:
    parts = msgpack.unpackb(data)
    if type(parts) is not list or len(parts) != 3 or any(type(part) is not int for part in parts):
        raise ValueError("expected an array of 3 integers")
    return timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])


def _decode_decimal(data: bytes) -> Decimal:
    with localcontext() as context:  # "abc" must fail even where the app's context makes it NaN
        context.traps[InvalidOperation] = True
        return Decimal(data.decode())


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    ExtCode.DATETIME: _decode_datetime,
    ExtCode.DATE: lambda data: date.fromisoformat(data.decode()),
    ExtCode.TIME: _decode_time,
    ExtCode.TIMEDELTA: _decode_timedelta,
    ExtCode.DECIMAL: _decode_decimal,
    ExtCode.UUID: lambda data: UUID(bytes=data),
}


class _Registered(NamedTuple):
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


# Markers for Codec._fault's walk: a step into a dict key or set element (the path stops there:
# neither has an index a user could write), and into a registered type's encoded value.
_KEY, _ELEMENT, _ENCODED = object(), object(), object()
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80


class Codec:
    """msgpack with streamtasks' extension types, plus the types an app registers."""

    def __init__(self) -> None:
        self._registered: dict[type, _Registered] = {}  # in registration order
        self._by_name: dict[str, _Registered] = {}
        # Exact class -> encoder, so `default` needs one dict lookup for the usual types.
        self._encoders: dict[type, Callable[[Any], Any]] = {
            **_BASES,
            tuple: self._encode_tuple,
            set: self._encode_set,
            frozenset: self._encode_set,
        }
        self._decoders: dict[int, Callable[[bytes], Any]] = {
            **_DECODERS,
            ExtCode.SET: lambda data: set(self._items(data)),
            ExtCode.FROZENSET: lambda data: frozenset(self._items(data)),
            ExtCode.TUPLE: lambda data: tuple(self._items(data)),
            ExtCode.REGISTERED: self._decode_registered,
        }
        self._default_fn = self._default
        self._ext_hook_fn = self._ext_hook

    def register(
        self,
        cls: type,
        encode: Callable[[Any], Any],
        decode: Callable[[Any], Any],
        *,
        name: str | None = None,
    ) -> None:
        """Carry instances of cls (and its subclasses) as `decode(value)` of `encode(instance)`.

        encode returns anything this codec can pack; decode gets that back and rebuilds the
        object. name, by default module.qualname, is what the other side looks the type up by.
        """
        if not isinstance(cls, type):
            raise ConfigurationError(f"register_type needs a class, not {cls!r}")
        if cls in _BUILT_IN:
            raise ConfigurationError(
                f"{cls.__qualname__} is built in: streamtasks already encodes it"
            )
        if name is None:
            name = f"{cls.__module__}.{cls.__qualname__}"
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a type name must be a non-empty string, not {name!r}")
        if cls in self._registered:
            raise ConfigurationError(f"{cls.__qualname__} is already registered")
        if name in self._by_name:
            raise ConfigurationError(f"the type name {name!r} is already registered")
        record = _Registered(name, encode, decode)
        self._registered[cls] = self._by_name[name] = record
        self._encoders[cls] = lambda value: self._nested(ExtCode.REGISTERED, [name, encode(value)])

    def pack(self, obj: Any, *, root: str = "value") -> bytes:
        """msgpack bytes of obj; EncodeError names the first part that cannot go, from root."""
        try:
            return self._packb(obj)
        except Exception as exc:
            raise self._encode_error(exc, [(root, obj)], root) from exc

    def pack_call(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], headers: Mapping[str, Any]
    ) -> bytes:
        """The `call` field: a map of args, kwargs and headers; error paths read `args[1]`, …"""
        call = {"args": list(args), "kwargs": dict(kwargs), "headers": dict(headers)}
        try:
            return self._packb(call)
        except Exception as exc:
            raise self._encode_error(exc, call.items(), "the call") from exc

    def unpack(self, data: bytes) -> Any:
        """The value in data; DecodeError (only) for anything malformed."""
        try:
            return self._unpackb(data)
        except DecodeError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            raise DecodeError(f"not valid msgpack: {type(exc).__name__}: {exc}") from exc

    def canonical(self, obj: Any) -> bytes:
        """Bytes that are the same for equal values, whatever the dict order or set iteration order.

        They are valid msgpack for `unpack`, with map entries and set elements sorted by their
        own bytes; for fingerprints (idempotency keys), not for the hot path.
        """
        try:
            return self._canonical(obj)
        except Exception as exc:
            self.pack(obj)  # raises the EncodeError that names the value when obj cannot go at all
            raise EncodeError(f"cannot encode value: {type(exc).__name__}: {exc}") from exc

    # Encoding

    def _packb(self, obj: Any) -> bytes:
        # A fresh Packer each time: cheap (msgpack.packb is slower for its **kwargs), and re-entrant
        # for the nested payloads of tuples, sets and registered types, and for threads.
        packer = msgpack.Packer(default=self._default_fn, strict_types=True, use_bin_type=True)
        return packer.pack(obj)  # type: ignore[no-any-return]

    def _default(self, obj: Any) -> Any:
        encoder = self._encoders.get(type(obj))
        if encoder is None:
            kind = self._kind(obj)
            if kind is None:
                raise TypeError(f"cannot encode object of type {type(obj).__qualname__}")
            encoder = self._encoders[kind]
        return encoder(obj)

    def _kind(self, obj: Any) -> type | None:
        """The class whose encoder takes obj: its own, a registered base, or a built-in base."""
        cls = type(obj)
        if cls in self._encoders or cls in _NATIVE:
            return cls
        for registered in self._registered:
            if isinstance(obj, registered):
                return registered
        for base in (*_BASES, *_CONTAINERS):
            if isinstance(obj, base):
                return base
        return None

    def _encode_tuple(self, value: tuple[Any, ...]) -> Any:
        return self._nested(ExtCode.TUPLE, list(value))

    def _encode_set(self, value: set[Any] | frozenset[Any]) -> Any:
        code = ExtCode.FROZENSET if isinstance(value, frozenset) else ExtCode.SET
        return self._nested(code, list(value))

    def _nested(self, code: int, items: list[Any]) -> Any:
        if _depth.n >= MAX_NESTING:
            raise ValueError(_TOO_DEEP)
        _depth.n += 1
        try:
            return _tagged(code, self._packb(items))
        finally:
            _depth.n -= 1

    def _canonical(self, obj: Any, nesting: int = 0) -> bytes:
        kind = self._kind(obj)
        if kind is list or kind is dict:
            inner = partial(self._canonical, nesting=nesting)
        elif kind in _CONTAINERS or kind in self._registered:
            if nesting >= MAX_NESTING:
                raise ValueError(_TOO_DEEP)
            inner = partial(self._canonical, nesting=nesting + 1)
        else:
            return self._packb(obj)
        if kind is list or kind is tuple:
            body = _array_header(len(obj)) + b"".join(map(inner, obj))
            return body if kind is list else _packed_ext(ExtCode.TUPLE, body)
        if kind is dict:
            # msgpack is prefix-free, so sorting key+value sorts by key.
            pairs = sorted(inner(k) + inner(v) for k, v in obj.items())
            return _map_header(len(pairs)) + b"".join(pairs)
        if kind is set or kind is frozenset:
            elements = sorted(map(inner, obj))
            code = ExtCode.SET if kind is set else ExtCode.FROZENSET
            return _packed_ext(code, _array_header(len(elements)) + b"".join(elements))
        record = self._registered[kind]
        pair = _array_header(2) + self._packb(record.name) + inner(record.encode(obj))
        return _packed_ext(ExtCode.REGISTERED, pair)

    def _encode_error(
        self, exc: Exception, roots: Iterable[tuple[str, Any]], what: str
    ) -> EncodeError:
        fault = self._fault(roots)
        if fault is None:  # something the walk does not check: nested too deeply, over 4 GiB, …
            return EncodeError(f"cannot encode {what}: {type(exc).__name__}: {exc}")
        return EncodeError(f"cannot encode {fault}")

    def _fault(self, roots: Iterable[tuple[str, Any]]) -> str | None:
        """Where and why the first value msgpack could not encode fails, as "PATH: why".

        Run only after packing failed, so the fast path pays nothing for paths; iterative, so a
        deep value or a cycle ends in a message rather than a RecursionError.
        """
        # Entries: (value, path, frozen: a key or set element, attrs: a registered type's dict,
        # nesting: as counted for MAX_NESTING), or the id of a container whose walk ends there.
        stack: list[tuple[Any, str, bool, bool, int] | int] = [
            (value, name, False, False, 0) for name, value in reversed(list(roots))
        ]
        # id -> (path, the container itself: held so that its id is not reused while open).
        open_containers: dict[int, tuple[str, Any]] = {}
        while stack:
            entry = stack.pop()
            if isinstance(entry, int):
                del open_containers[entry]
                continue
            value, path, frozen, attrs, nesting = entry
            kind = self._kind(value)
            found = self._inspect(value, kind, attrs)
            if isinstance(found, str):
                return f"{path}: {found}"
            if found is None:
                continue
            if kind in _CONTAINERS or kind in self._registered:
                if nesting >= MAX_NESTING:
                    return f"{path}: {_TOO_DEEP}"
                nesting += 1
            if id(value) in open_containers:
                name = type(value).__qualname__
                return f"{path}: a {name} that contains itself ({open_containers[id(value)][0]})"
            open_containers[id(value)] = (path, value)
            stack.append(id(value))
            for child, step in reversed(found):
                if step is _ENCODED:
                    stack.append((child, path, frozen, True, nesting))
                elif frozen:
                    stack.append((child, path, True, False, nesting))
                elif step is _KEY or step is _ELEMENT:
                    where = "a key of" if step is _KEY else "an element of"
                    stack.append((child, f"{where} {path}", True, False, nesting))
                else:
                    stack.append((child, path + str(step), False, False, nesting))
        return None

    def _inspect(
        self, value: Any, kind: type | None, attrs: bool
    ) -> str | list[tuple[Any, object]] | None:
        """Why value cannot be encoded, or its (child, step) pairs, or None for a good leaf."""
        if kind is None:
            name = type(value).__qualname__
            return f"object of type {name} (register it with app.register_type)"
        if kind is list or kind is tuple:
            return [(item, f"[{i}]") for i, item in enumerate(value)]
        if kind is dict:
            return [
                pair
                for key, item in value.items()
                for pair in ((key, _KEY), (item, _step(key, attrs)))
            ]
        if kind is set or kind is frozenset:
            return [(item, _ELEMENT) for item in value]
        if kind is int:
            in_range = _INT_MIN <= value <= _INT_MAX
            return None if in_range else "an int outside msgpack's range, -2**63 to 2**64-1"
        record = self._registered.get(kind)
        try:
            if record is not None:
                return [(record.encode(value), _ENCODED)]
            if kind not in _NATIVE:
                self._encoders[kind](value)
        except Exception as exc:
            if record is None:
                return str(exc)
            return f"the encoder registered for {record.name} raised {type(exc).__name__}: {exc}"
        return None

    # Decoding

    def _unpackb(self, data: bytes) -> Any:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, ext_hook=self._ext_hook_fn, timestamp=3
        )

    def _ext_hook(self, code: int, data: bytes) -> Any:
        decoder = self._decoders.get(code)
        if decoder is None:
            raise DecodeError(f"unknown msgpack extension type {code}")
        try:
            return decoder(data)
        except DecodeError:
            raise
        except Exception as exc:
            kind = ExtCode(code).name.lower()
            raise DecodeError(
                f"bad {kind} (msgpack extension type {code}): {type(exc).__name__}: {exc}"
            ) from exc

    def _items(self, data: bytes) -> list[Any]:
        if _depth.n >= MAX_NESTING:
            raise ValueError(_TOO_DEEP)
        _depth.n += 1
        try:
            if _depth.n <= _FAST_NESTING:
                items = self._unpackb(data)
            else:
                unpacker = msgpack.Unpacker(
                    None,
                    raw=False,
                    strict_map_key=False,
                    ext_hook=self._ext_hook_fn,
                    timestamp=3,
                    max_buffer_size=len(data),
                )
                unpacker.feed(data)
                items = unpacker.unpack()
                if unpacker.tell() != len(data):
                    raise ValueError("extra bytes after the array")
        finally:
            _depth.n -= 1
        if type(items) is not list:
            raise ValueError("expected an array")
        return items

    def _decode_registered(self, data: bytes) -> Any:
        items = self._items(data)
        if len(items) != 2 or type(items[0]) is not str:
            raise ValueError("expected an array of a type name and a value")
        name, value = items
        record = self._by_name.get(name)
        if record is None:
            raise DecodeError(
                f"unknown type {name!r}: register it with app.register_type(...) in every "
                "process that reads it, the worker too"
            )
        try:
            return record.decode(value)
        except Exception as exc:
            raise DecodeError(
                f"the decoder registered for {name} raised {type(exc).__name__}: {exc}"
            ) from exc


def _step(key: Any, attrs: bool) -> str:
    """How a user writes the step to a dict value: ['k'], or .k inside a registered type."""
    if attrs and isinstance(key, str) and key.isidentifier():
        return f".{key}"
    return f"[{_repr.repr(key)}]"


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    return b"\xdc" + n.to_bytes(2, "big") if n < 2**16 else b"\xdd" + n.to_bytes(4, "big")


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    return b"\xde" + n.to_bytes(2, "big") if n < 2**16 else b"\xdf" + n.to_bytes(4, "big")


def _packed_ext(code: int, payload: bytes) -> bytes:
    return msgpack.packb(_tagged(code, payload))  # type: ignore[no-any-return]
