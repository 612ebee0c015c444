"""Field tables kept as raw typed values, so that rewriting a few headers leaves the others byte-exact.

pamqp decodes a table into Python values and re-encodes integers in the smallest type that fits, so a
header a client sent as a 64-bit `long` would come back as a byte. RabbitMQ keeps every header's wire type
and writes its own (x-death's `count` is a `long`), and typed clients (Java's `(Long) death.get("count")`)
depend on it. Each entry here is `(key, value)` where `value` is the type tag followed by the value bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, TypeVar

from pamqp import decode

_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")

Entries = list[tuple[str, bytes]]
T = TypeVar("T")


class TableError(ValueError):
    """A field table or array a client sent is malformed (the broker only looks inside when it must)."""


def _checked(read: Callable[[], T]) -> T:
    try:
        return read()
    except (ValueError, IndexError, struct.error, UnicodeDecodeError) as exc:
        raise TableError(f"malformed field table: {exc}") from exc


def split_table(field: bytes) -> Entries:
    """The entries of a field table given with its 4-byte size prefix, values kept raw."""
    return _checked(lambda: _split_table(field))


def _split_table(field: bytes) -> Entries:
    end = 4 + _U32.unpack_from(field, 0)[0]
    entries = []
    pos = 4
    while pos < end:
        key_end = pos + 1 + field[pos]
        key = field[pos + 1 : key_end].decode("utf-8", "replace")
        consumed, _ = decode.embedded_value(field[key_end:end])
        entries.append((key, field[key_end : key_end + consumed]))
        pos = key_end + consumed
    return entries


def split_array(value: bytes) -> list[bytes]:
    """The raw typed items of a raw array value (tag `A`)."""
    return _checked(lambda: _split_array(value))


def _split_array(value: bytes) -> list[bytes]:
    end = 5 + _U32.unpack_from(value, 1)[0]
    items = []
    pos = 5
    while pos < end:
        consumed, _ = decode.embedded_value(value[pos:end])
        items.append(value[pos : pos + consumed])
        pos += consumed
    return items


def decoded(value: bytes) -> Any:
    """The Python value of one raw typed value."""
    return _checked(lambda: decode.embedded_value(value)[1])


def table_field(entries: Entries) -> bytes:
    """A field table (size prefix and entries), as a property or a nested value's body."""
    body = b"".join(_shortstr(key) + value for key, value in entries)
    return _U32.pack(len(body)) + body


def sorted_entries(entries: Entries) -> Entries:
    """Entries ordered by key bytes, as RabbitMQ orders a table it has changed."""
    return sorted(entries, key=lambda entry: entry[0].encode())


def longstr(text: str) -> bytes:
    data = text.encode()
    return b"S" + _U32.pack(len(data)) + data


def long(number: int) -> bytes:
    """A signed 64-bit integer, RabbitMQ's `long` (tag `l`)."""
    return b"l" + _I64.pack(number)


def timestamp(seconds: int) -> bytes:
    return b"T" + _U64.pack(seconds)


def array(items: list[bytes]) -> bytes:
    body = b"".join(items)
    return b"A" + _U32.pack(len(body)) + body


def table(entries: Entries) -> bytes:
    return b"F" + table_field(entries)


def _shortstr(text: str) -> bytes:
    data = text.encode()
    return bytes((len(data),)) + data
