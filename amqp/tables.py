"""Field tables kept as raw typed values, so that rewriting a few headers leaves the others byte-exact.

pamqp decodes a table into Python values and re-encodes integers in the smallest type that fits, so a
header a client sent as a 64-bit `long` would come back as a byte. RabbitMQ keeps every header's wire type
and writes its own (x-death's `count` is a `long`), and typed clients (Java's `(Long) death.get("count")`)
depend on it. Each entry here is `(key, value)` where `value` is the type tag followed by the value bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

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
    except TableError:
        raise
    except (ValueError, IndexError, struct.error, UnicodeDecodeError, OverflowError, OSError) as exc:
        raise TableError(f"malformed field table: {exc}") from exc


# Field value types as RabbitMQ parses them (rabbit_binary_parser): fixed sizes, and 32-bit length prefixes.
_FIXED: dict[int, struct.Struct] = {
    ord(tag): struct.Struct(">" + fmt)
    for tag, fmt in (
        ("t", "B"), ("b", "b"), ("B", "B"), ("s", "h"), ("u", "H"), ("I", "i"), ("i", "I"),
        ("l", "q"), ("L", "q"), ("f", "f"), ("d", "d"), ("T", "Q"), ("D", "BI"),
    )
}
_VOID = ord("V")
_LONGSTR, _BYTES, _TABLE, _ARRAY = (ord(tag) for tag in "SxFA")


def _value_end(data: bytes, pos: int, end: int) -> int:
    """Where the typed value at `pos` (tag first) ends; nested tables and arrays are skipped by their size,
    not looked into."""
    tag = data[pos]
    fixed = _FIXED.get(tag)
    if fixed is not None:
        value_end = pos + 1 + fixed.size
    elif tag in (_LONGSTR, _BYTES, _TABLE, _ARRAY):
        value_end = pos + 5 + _U32.unpack_from(data, pos + 1)[0]
    elif tag == _VOID:
        value_end = pos + 1
    else:
        raise TableError(f"malformed field table: unknown field type {bytes([tag])!r}")
    if value_end > end:
        raise TableError("malformed field table: a value runs past the end of its table")
    return value_end


def _scalar(tag: int, data: bytes, pos: int, value_end: int) -> Any:
    """The Python value of a non-container value whose bytes (tag excluded) start at `pos`, as pamqp
    gives it; a longstr that is not UTF-8 stays bytes, as RabbitMQ carries it."""
    fixed = _FIXED.get(tag)
    if fixed is None:
        raw = data[pos + 4 : value_end] if tag != _VOID else b""
        if tag == _VOID:
            return None
        if tag == _BYTES:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    values = fixed.unpack_from(data, pos)
    if tag == ord("t"):
        return bool(values[0])
    if tag == ord("D"):
        return Decimal(values[1]) * Decimal(10) ** -values[0]
    if tag == ord("T"):
        seconds = values[0]
        # pamqp's reading: anything past the year 2106 is milliseconds.
        return datetime.fromtimestamp(seconds / 1000 if seconds > 0xFFFFFFFF else seconds, tz=UTC)
    return values[0]


def walk_table(field: bytes, *, build: bool = True) -> dict[str, Any] | None:
    """Check a field table (with its 4-byte size prefix, filling `field` exactly) and, with `build`, decode
    it into Python values. Iterative and linear in its size, so neither a wide table nor one nested
    10,000 deep costs more than its bytes; raises TableError for what RabbitMQ's parser refuses.
    Keys that are not UTF-8 are kept with their bytes escaped (surrogateescape)."""
    return _checked(lambda: _walk(field, build))


def _walk(data: bytes, build: bool) -> dict[str, Any] | None:
    end = 4 + _U32.unpack_from(data, 0)[0]
    if end != len(data):
        raise TableError("malformed field table: its size does not match its bytes")
    root: dict[str, Any] | None = {} if build else None
    # Each open table or array: [container (None when only checking), is_table, position, end].
    stack: list[list[Any]] = [[root, True, 4, end]]
    while stack:
        top = stack[-1]
        container, is_table, pos, end = top
        if pos == end:
            stack.pop()
            continue
        key = ""
        if is_table:
            key_end = pos + 1 + data[pos]
            if key_end >= end:
                raise TableError("malformed field table: a key runs past the end of its table")
            if build:
                key = data[pos + 1 : key_end].decode("utf-8", "surrogateescape")
            pos = key_end
        tag = data[pos]
        value_end = _value_end(data, pos, end)
        top[2] = value_end
        if tag == _TABLE or tag == _ARRAY:
            child: Any = ({} if tag == _TABLE else []) if build else None
            stack.append([child, tag == _TABLE, pos + 5, value_end])
            value = child
        elif build:
            value = _scalar(tag, data, pos + 1, value_end)
        else:
            continue
        if build:
            if is_table:
                container[key] = value
            else:
                container.append(value)
    return root


def split_table(field: bytes) -> Entries:
    """The entries of a field table given with its 4-byte size prefix, values kept raw."""
    return _checked(lambda: _split_table(field))


def _split_table(field: bytes) -> Entries:
    end = 4 + _U32.unpack_from(field, 0)[0]
    if end > len(field):
        raise TableError("malformed field table: its size runs past its bytes")
    entries = []
    pos = 4
    while pos < end:
        key_end = pos + 1 + field[pos]
        if key_end >= end:
            raise TableError("malformed field table: a key runs past the end of its table")
        key = field[pos + 1 : key_end].decode("utf-8", "surrogateescape")
        value_end = _value_end(field, key_end, end)
        entries.append((key, field[key_end:value_end]))
        pos = value_end
    return entries


def split_array(value: bytes) -> list[bytes]:
    """The raw typed items of a raw array value (tag `A`)."""
    return _checked(lambda: _split_array(value))


def _split_array(value: bytes) -> list[bytes]:
    end = 5 + _U32.unpack_from(value, 1)[0]
    if end > len(value):
        raise TableError("malformed field array: its size runs past its bytes")
    items = []
    pos = 5
    while pos < end:
        item_end = _value_end(value, pos, end)
        items.append(value[pos:item_end])
        pos = item_end
    return items


def decoded(value: bytes) -> Any:
    """The Python value of one raw typed value."""
    return _checked(lambda: _decoded(value))


def _decoded(value: bytes) -> Any:
    tag = value[0]
    if tag == _TABLE:
        return _walk(value[1:], True)
    if tag == _ARRAY:
        return _walk_array(value)
    return _scalar(tag, value, 1, _value_end(value, 0, len(value)))


def _walk_array(value: bytes) -> list[Any]:
    # An array is walked as the one value of a table holding it, so nesting stays iterative.
    wrapper = b"\x00" + value
    table = _walk(_U32.pack(len(wrapper)) + wrapper, True)
    assert table is not None
    return table[""]


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
