"""A published message as the broker holds it: raw property bytes kept, a few fields peeked."""

from __future__ import annotations

from typing import Any

from pamqp.commands import Basic

from leveret.amqp.fastpath import names_raw
from leveret.amqp.properties import decode_properties, peek_properties


class Message:
    """One published message.

    `properties_raw` is the content header payload after the body size (property flags and property
    list), exactly as the publisher sent it, so a delivery re-sends it without re-encoding. Only the
    fields the broker acts on are peeked at publish time; the rest decode on demand (headers exchange,
    consistent-hash on a header or property, CC/BCC, direct reply-to) and are not kept.
    """

    __slots__ = (
        "exchange",
        "routing_key",
        "properties_raw",
        "body",
        "delivery_mode",
        "priority",
        "expiration",
        "user_id",
        "names_raw",
        "size",
    )

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        properties_raw: bytes,
        body: bytes | bytearray,  # a bytearray when it came in several frames
        names: bytes | None = None,
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        # Exchange and routing key encoded for the wire; a publish passes the bytes it arrived with.
        self.names_raw = names if names is not None else names_raw(exchange, routing_key)
        self.properties_raw = properties_raw
        self.body = body
        # What the message holds: its body and raw properties (a delivery's output is counted by it).
        self.size = len(body) + len(properties_raw)
        self.delivery_mode, self.priority, self.expiration, self.user_id = peek_properties(properties_raw)

    @property
    def properties(self) -> Basic.Properties:
        # Decoded anew each time and not kept: decoded headers take ~12 times their wire size, and a
        # message waiting in a queue should hold only its wire bytes (what the memory budget counts).
        return decode_properties(self.properties_raw)

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers or {}

    @property
    def persistent(self) -> bool:
        return self.delivery_mode == 2

    @property
    def body_size(self) -> int:
        return len(self.body)
