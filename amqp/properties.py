"""Basic content properties: peek the few the broker acts on, decode the rest only on demand.

`raw` is the content header payload after class-id, weight and body-size: the property flags
followed by the property list, exactly as the publisher sent them.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp.commands import Basic
from pamqp.header import ContentHeader

from .constants import CLASS_BASIC
from .tables import TableError, walk_table

# Property flag bits, highest first, in wire order (AMQP 0-9-1 basic class).
_FLAG_CONTENT_TYPE = 1 << 15
_FLAG_CONTENT_ENCODING = 1 << 14
_FLAG_HEADERS = 1 << 13
_FLAG_DELIVERY_MODE = 1 << 12
_FLAG_PRIORITY = 1 << 11
_FLAG_CORRELATION_ID = 1 << 10
_FLAG_REPLY_TO = 1 << 9
_FLAG_EXPIRATION = 1 << 8
_FLAG_MESSAGE_ID = 1 << 7
_FLAG_TIMESTAMP = 1 << 6
_FLAG_TYPE = 1 << 5
_FLAG_USER_ID = 1 << 4
_FLAG_APP_ID = 1 << 3
_FLAG_CLUSTER_ID = 1 << 2
# Every property after the priority.
_LATER_FIELDS = (1 << 11) - 1 & ~3

_HEADER_PREFIX = struct.Struct(">HHQ")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

EMPTY_PROPERTIES_RAW = b"\x00\x00"


class PropertiesError(ValueError):
    """The property list is truncated or malformed."""


def _skip_shortstr(raw: bytes, pos: int) -> int:
    return pos + 1 + raw[pos]


def _read_shortstr(raw: bytes, pos: int) -> tuple[str, int]:
    end = pos + 1 + raw[pos]
    if end > len(raw):
        raise PropertiesError("short string runs past the end of the content header")
    return raw[pos + 1 : end].decode("utf-8", "replace"), end


def peek_properties(raw: bytes) -> tuple[int, int, str | None, str | None]:
    """Return (delivery_mode, priority, expiration, user_id) without decoding the rest.

    Absent fields read as delivery_mode 1 (transient), priority 0, no expiration, no user id.
    """
    try:
        flags = _U16.unpack_from(raw, 0)[0]
        pos = 2
        word = flags
        while word & 1:  # continuation flag words: basic defines none of their bits; skip them
            word = _U16.unpack_from(raw, pos)[0]
            pos += 2
        delivery_mode, priority, expiration, user_id = 1, 0, None, None
        if flags & _FLAG_CONTENT_TYPE:
            pos = _skip_shortstr(raw, pos)
        if flags & _FLAG_CONTENT_ENCODING:
            pos = _skip_shortstr(raw, pos)
        if flags & _FLAG_HEADERS:
            pos += 4 + _U32.unpack_from(raw, pos)[0]
        if flags & _FLAG_DELIVERY_MODE:
            delivery_mode = raw[pos]
            pos += 1
        if flags & _FLAG_PRIORITY:
            priority = raw[pos]
            pos += 1
        if not flags & _LATER_FIELDS:  # the usual publish: nothing after the priority
            if pos > len(raw):
                raise PropertiesError("content header properties are truncated")
            return delivery_mode, priority, None, None
        # Walked to the end, so that a list cut short is refused here, not when a headers exchange or
        # a dead-lettering decodes it later.
        if flags & _FLAG_CORRELATION_ID:
            pos = _skip_shortstr(raw, pos)
        if flags & _FLAG_REPLY_TO:
            pos = _skip_shortstr(raw, pos)
        if flags & _FLAG_EXPIRATION:
            expiration, pos = _read_shortstr(raw, pos)
        if flags & _FLAG_MESSAGE_ID:
            pos = _skip_shortstr(raw, pos)
        if flags & _FLAG_TIMESTAMP:
            pos += 8
        if flags & _FLAG_TYPE:
            pos = _skip_shortstr(raw, pos)
        if flags & _FLAG_USER_ID:
            user_id, pos = _read_shortstr(raw, pos)
        if flags & _FLAG_APP_ID:
            pos = _skip_shortstr(raw, pos)
        if flags & _FLAG_CLUSTER_ID:
            pos = _skip_shortstr(raw, pos)
        if pos > len(raw):
            raise PropertiesError("content header properties are truncated")
        return delivery_mode, priority, expiration, user_id
    except (IndexError, struct.error) as exc:
        raise PropertiesError("content header properties are truncated") from exc


# Each property's flag and wire kind, in wire order: "s" shortstr, "t" table, "o" octet, "q" 64-bit.
_LAYOUT = (
    (_FLAG_CONTENT_TYPE, "s"),
    (_FLAG_CONTENT_ENCODING, "s"),
    (_FLAG_HEADERS, "t"),
    (_FLAG_DELIVERY_MODE, "o"),
    (_FLAG_PRIORITY, "o"),
    (_FLAG_CORRELATION_ID, "s"),
    (_FLAG_REPLY_TO, "s"),
    (_FLAG_EXPIRATION, "s"),
    (_FLAG_MESSAGE_ID, "s"),
    (_FLAG_TIMESTAMP, "q"),
    (_FLAG_TYPE, "s"),
    (_FLAG_USER_ID, "s"),
    (_FLAG_APP_ID, "s"),
    (_FLAG_CLUSTER_ID, "s"),
)
HEADERS = _FLAG_HEADERS
REPLY_TO = _FLAG_REPLY_TO
EXPIRATION = _FLAG_EXPIRATION


def split_properties(raw: bytes) -> dict[int, bytes]:
    """Each present property's raw bytes by its flag, so one can be replaced and the rest kept as sent."""
    flags = _U16.unpack_from(raw, 0)[0]
    pos = 2
    word = flags
    while word & 1:  # continuation flag words: basic defines none of their bits
        word = _U16.unpack_from(raw, pos)[0]
        pos += 2
    fields = {}
    for flag, kind in _LAYOUT:
        if not flags & flag:
            continue
        if kind == "s":
            size = 1 + raw[pos]
        elif kind == "t":
            size = 4 + _U32.unpack_from(raw, pos)[0]
        else:
            size = 1 if kind == "o" else 8
        fields[flag] = raw[pos : pos + size]
        pos += size
    return fields


def join_properties(fields: dict[int, bytes]) -> bytes:
    """The raw properties (flags and list) holding `fields`, the inverse of `split_properties`."""
    flags = 0
    parts = []
    for flag, _ in _LAYOUT:
        value = fields.get(flag)
        if value is not None:
            flags |= flag
            parts.append(value)
    return _U16.pack(flags) + b"".join(parts)


def decode_properties(raw: bytes) -> Basic.Properties:
    """Decode every property: the headers table with `walk_table` (linear, iterative, as RabbitMQ reads
    it), the rest with pamqp."""
    try:
        fields = split_properties(raw)
        headers = fields.pop(HEADERS, None)
        header = ContentHeader()
        header.unmarshal(_HEADER_PREFIX.pack(CLASS_BASIC, 0, 0) + join_properties(fields))
        if headers is not None:
            header.properties.headers = walk_table(headers)
    except Exception as exc:  # pamqp raises a mix of ValueError, struct.error, UnicodeDecodeError
        raise PropertiesError(f"malformed content header properties: {exc}") from exc
    return header.properties


def check_headers(raw: bytes) -> None:
    """Raise TableError if the headers table is malformed in a way RabbitMQ's parser refuses; checked once,
    at publish, so that nothing stored breaks a consumer or a dead-lettering later."""
    try:
        field = split_properties(raw).get(HEADERS)
    except (IndexError, struct.error) as exc:
        raise TableError("malformed field table: the properties end inside it") from exc
    if field is not None:
        walk_table(field, build=False)


def encode_properties(properties: Basic.Properties) -> bytes:
    """The raw form of `properties` (flags and list), as `decode_properties` reads it."""
    return properties.marshal()


def properties_from_dict(values: dict[str, Any]) -> bytes:
    """Raw properties from keyword values, e.g. {'delivery_mode': 2, 'headers': {...}}."""
    return encode_properties(Basic.Properties(**values))
