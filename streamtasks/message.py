"""The message envelope and its wire format: schema_version lives here.

A message is a flat stream entry, readable with XRANGE and writable with a plain XADD from any
language (see docs/protocol.md)::

    schema_version   "2" ("1" is still read)
    id               task id (any unique string; streamtasks uses 32 hex digits)
    task             registered task name, e.g. "shop.place_order"
    call             msgpack map {"args": [...], "kwargs": {...}, "headers": {...}}
    attempt          optional; which run this is, the first being 1 (the default)
    idempotency_key  optional
    expires          optional; Unix ms after which the task must not start

Version 1 counted `attempt` from 0 (retries so far) and had no extension types in `call`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from streamtasks.codec import Codec
from streamtasks.errors import DecodeError, EncodeError

SCHEMA_VERSION = "2"
#: Versions this code reads; a version 1 entry counted its attempts from 0.
_V1, _V2 = b"1", SCHEMA_VERSION.encode()

Fields = dict[str, bytes | str]


class Message(NamedTuple):
    """One task invocation, as enqueued (a tuple: cheap to build once per task)."""

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = {}
    headers: Mapping[str, Any] = {}
    attempt: int = 1
    idempotency_key: str | None = None
    expires_ms: int | None = None


#: The built-in types only, for what streamtasks writes itself (errors, dead-letter records).
BUILT_IN = Codec()


def pack(obj: Any) -> bytes:
    """msgpack bytes of a value made of built-in types; EncodeError if it has others."""
    return BUILT_IN.pack(obj)


def unpack(data: bytes) -> Any:
    return BUILT_IN.unpack(data)


def encode(message: Message, codec: Codec = BUILT_IN, max_bytes: int | None = None) -> Fields:
    """The stream fields of a message; raises EncodeError when it cannot be sent."""
    call = codec.pack_call(message.args, message.kwargs, message.headers)
    if max_bytes is not None and len(call) > max_bytes:
        raise EncodeError(
            f"message for {message.task} is {len(call)} bytes, over the limit of {max_bytes}; "
            "pass a reference (an id, a URL) instead of the data"
        )
    fields: Fields = {
        "schema_version": SCHEMA_VERSION,
        "id": message.id,
        "task": message.task,
        "call": call,
    }
    if message.attempt != 1:
        fields["attempt"] = str(message.attempt)
    if message.idempotency_key is not None:
        fields["idempotency_key"] = message.idempotency_key
    if message.expires_ms is not None:
        fields["expires"] = str(message.expires_ms)
    return fields


def _text(fields: Mapping[bytes, bytes], name: bytes) -> str:
    raw = fields.get(name)
    if raw is None:
        raise DecodeError(f"missing field {name.decode()!r}")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise DecodeError(f"field {name.decode()!r} is not UTF-8") from None


def decode(fields: Mapping[bytes, bytes], codec: Codec = BUILT_IN) -> Message:
    """Parse stream fields into a Message, or raise DecodeError saying what is wrong."""
    version = fields.get(b"schema_version")
    if version != _V2 and version != _V1:
        if version is None:
            raise DecodeError("not a streamtasks message: no schema_version field")
        raise DecodeError(
            f"unknown schema_version {version!r}; this worker reads '1' and {SCHEMA_VERSION!r}"
        )
    raw_call = fields.get(b"call")
    if raw_call is None:
        raise DecodeError("missing field 'call'")
    try:
        call = codec.unpack(raw_call)
    except DecodeError as exc:
        raise DecodeError(f"field 'call': {exc}") from None
    if not isinstance(call, dict):
        raise DecodeError("field 'call' must be a msgpack map")
    args, kwargs, headers = call.get("args", []), call.get("kwargs", {}), call.get("headers", {})
    if type(args) is not list or type(kwargs) is not dict or type(headers) is not dict:
        raise DecodeError("field 'call' needs args as an array and kwargs, headers as maps")
    if kwargs and not all(type(name) is str for name in kwargs):
        raise DecodeError("field 'call' has a kwargs name that is not a string")
    raw_attempt = fields.get(b"attempt")
    try:
        attempt = 1 if raw_attempt is None else int(raw_attempt) + (version == _V1)
    except ValueError:
        raise DecodeError("field 'attempt' is not an integer") from None
    if attempt < 1:
        raise DecodeError(f"field 'attempt' must be 1 or more, not {attempt}")
    # Refused rather than mangled: two different keys must never decode to the same one.
    key = None if b"idempotency_key" not in fields else _text(fields, b"idempotency_key")
    raw_expires = fields.get(b"expires")
    try:
        expires = None if raw_expires is None else int(raw_expires)
    except ValueError:
        raise DecodeError("field 'expires' is not an integer (Unix ms)") from None
    return Message(
        _text(fields, b"id"),
        _text(fields, b"task"),
        tuple(args),
        kwargs,
        headers,
        attempt,
        key,
        expires,
    )


def netstring(values: list[bytes | str]) -> bytes:
    """Length-prefixed concatenation that the Lua scripts can split without a msgpack library."""
    out = bytearray()
    for value in values:
        data = value.encode() if isinstance(value, str) else value
        out += b"%d:" % len(data)
        out += data
    return bytes(out)


def unnetstring(blob: bytes) -> list[bytes]:
    """The values `netstring` joined; DecodeError if `blob` is not a list of netstrings."""
    out: list[bytes] = []
    pos = 0
    while pos < len(blob):
        colon = blob.find(b":", pos)
        if colon < 0 or not blob[pos:colon].isdigit():
            raise DecodeError("not a list of netstrings")
        end = colon + 1 + int(blob[pos:colon])
        if end > len(blob):
            raise DecodeError("a netstring runs past the end")
        out.append(blob[colon + 1 : end])
        pos = end
    return out


def flatten(fields: Mapping[Any, Any]) -> list[Any]:
    """A field map as the flat field, value, ... list XADD and netstrings take."""
    return [item for pair in fields.items() for item in pair]
