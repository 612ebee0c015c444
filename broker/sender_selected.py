"""Sender-selected distribution (RabbitMQ's CC and BCC headers): extra routing keys chosen by the publisher.

Each key in the `CC` and `BCC` headers (arrays of strings) routes the message as its routing key would; the
message is delivered with its own routing key, and `BCC` is removed so that consumers never see it.
"""

from __future__ import annotations

from typing import Any

from leveret.amqp import tables
from leveret.amqp.properties import HEADERS, join_properties, split_properties
from leveret.broker.message import Message

# The headers table encodes field names as short strings: length octet, then the name.
_CC = b"\x02CC"
_BCC = b"\x03BCC"


def split_routing_keys(message: Message) -> tuple[Message, list[str]]:
    """(the message as it is to be delivered, the extra routing keys) for a published message."""
    raw = message.properties_raw
    if _CC not in raw and _BCC not in raw:  # the usual case: no decoding
        return message, []
    headers = message.headers
    keys = _keys(headers.get("CC")) + _keys(headers.get("BCC"))
    if "BCC" in headers:
        # Only BCC goes: the other headers keep their bytes (wire types, strings that are not UTF-8).
        fields = split_properties(raw)
        kept = [entry for entry in tables.split_table(fields[HEADERS]) if entry[0] != "BCC"]
        if kept:
            fields[HEADERS] = tables.table_field(kept)
        else:
            del fields[HEADERS]
        message = Message(message.exchange, message.routing_key, join_properties(fields), message.body)
    return message, keys


def _keys(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [
        key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        for key in value
        if isinstance(key, (str, bytes))
    ]
