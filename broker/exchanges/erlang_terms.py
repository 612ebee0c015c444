"""Render decoded AMQP values the way RabbitMQ's `~tp` does in error texts.

RabbitMQ formats some binding errors with Erlang's `~tp`, so a client sees `<<"abc">>` for a string
key, not `abc`. RabbitMQ runs with `+pc unicode`, so printable non-ASCII text keeps its characters
and gains a `/utf8` suffix. Long terms that Erlang would wrap across lines are rendered on one line.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

# Erlang's escapes for the control characters it still counts as printable.
_ESCAPES = {8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 27: "\\e", 34: '\\"', 92: "\\\\"}


def _printable(code: int, *, unicode: bool) -> bool:
    if 32 <= code < 127 or code in _ESCAPES:
        return True
    if not unicode:
        return 160 <= code <= 255
    return 160 <= code < 0xD800 or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF


def _quoted(text: str) -> str:
    return '"' + "".join(_ESCAPES.get(ord(c), c) for c in text) + '"'


def format_binary(data: bytes) -> str:
    """`~tp` of an Erlang binary: `<<"abc">>`, `<<"é"/utf8>>`, or its bytes `<<1,2>>`."""
    if not data:
        return "<<>>"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(_printable(ord(c), unicode=True) for c in text):
        return f"<<{_quoted(text)}>>" if text.isascii() else f"<<{_quoted(text)}/utf8>>"
    if all(_printable(b, unicode=False) for b in data):
        return f"<<{_quoted(data.decode('latin-1'))}>>"
    return "<<" + ",".join(map(str, data)) + ">>"


def format_term(value: Any) -> str:
    """`~tp` of a decoded AMQP field value (strings are binaries, void is `undefined`)."""
    if isinstance(value, str):
        return format_binary(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, (bytes, bytearray)):
        return format_binary(bytes(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "undefined"
    if isinstance(value, dict):  # a table: [{Key, Type, Value}]
        fields = (f"{{{format_term(k)},{field_type(v)},{format_term(v)}}}" for k, v in value.items())
        return "[" + ",".join(fields) + "]"
    if isinstance(value, list):  # an array: [{Type, Value}]
        return "[" + ",".join(f"{{{field_type(v)},{format_term(v)}}}" for v in value) + "]"
    return str(value)


def field_type(value: Any) -> str:
    """RabbitMQ's name for the AMQP table type of a decoded value.

    Decoding loses the wire type of integers; most clients (pika, the Java and .NET clients, amqplib)
    send a 32-bit signedint when the value fits. pamqp decodes a longstr that is not UTF-8 to bytes and
    a byte array ('x') to bytearray.
    """
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(1 << 31) <= value < 1 << 31 else "long"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


_TYPE_NAMES: dict[type, str] = {
    float: "double",
    str: "longstr",
    bytes: "longstr",
    bytearray: "binary",
    list: "array",
    dict: "table",
    type(None): "void",
    datetime: "timestamp",
    Decimal: "decimal",
}
