"""x-consistent-hash exchange (RabbitMQ's rabbitmq_consistent_hash_exchange plugin).

The binding key is a weight. The ring is a list of buckets: each newly bound destination appends
`weight` buckets, in bind order, and a message goes to the owner of the bucket that jump consistent
hash (Lamping & Veach) picks for a 64-bit hash of the routing key, or of the header or property the
exchange's `hash-header` / `hash-property` argument names.

Placement must survive restarts, so the ring is a pure function of the bindings in bind order and
the hash is BLAKE2b, never Python's per-process salted hash(). Growing the ring only moves keys to
the new buckets. RabbitMQ hashes with Erlang's phash2, so per-key placement differs from RabbitMQ's
(which it does not promise either); the rules and the distribution are the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from hashlib import blake2b
from typing import Any, ClassVar

from leveret.amqp.constants import PRECONDITION_FAILED
from leveret.amqp.errors import ChannelError
from leveret.broker.message import Message

from .base import Binding, Destination, Exchange
from .erlang_terms import format_term

MAX_WEIGHT = 10_000
HASHABLE_PROPERTIES = ("message_id", "correlation_id", "timestamp")

# Erlang's list_to_integer: optional sign, ASCII digits, nothing else (no spaces, no underscores).
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_MASK64 = (1 << 64) - 1


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach 2014) of a 64-bit key over `buckets` buckets."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK64
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def hash_input(value: Any) -> bytes:
    """The bytes hashed for a routing key, header or property value.

    Strings and byte strings hash by their bytes (both are binaries to RabbitMQ); other types are
    tagged so that 5 and "5" differ. Like RabbitMQ, an array hashes as its first element. A missing
    value (None) hashes to a constant, so all such messages go to one destination.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, list):
        return hash_input(value[0]) if value else b"\x00[]"
    return b"\x00" + repr(value).encode()


def stable_hash(value: Any) -> int:
    return int.from_bytes(blake2b(hash_input(value), digest_size=8).digest(), "big")


def _timestamp(message: Message) -> str | None:
    # RabbitMQ hashes the timestamp as the decimal text of its seconds.
    stamp: datetime | None = message.properties.timestamp
    return None if stamp is None else str(int(stamp.timestamp()))


def _hash_setting(arguments: dict[str, Any], name: str) -> str | None:
    value = arguments.get(name)
    if isinstance(value, bytes):  # a longstr that is not UTF-8
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, str):
        return value
    # RabbitMQ reads only longstr values here and crashes on anything else (a bare 541 closing the
    # connection): a crash is not behaviour worth copying, so the declare fails as a bad argument.
    raise ChannelError(PRECONDITION_FAILED, f"{name} must be a string, got {value!r}")


class ConsistentHashExchange(Exchange):
    kind: ClassVar[str] = "x-consistent-hash"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hashed_value = self._value_getter(self.arguments)
        self._ring: list[Destination] = []
        # The binding whose weight placed each destination's buckets on the ring.
        self._placed_by: dict[Destination, Binding] = {}

    @classmethod
    def validate_arguments(cls, arguments: dict[str, Any]) -> None:
        header = _hash_setting(arguments, "hash-header")
        prop = _hash_setting(arguments, "hash-property")
        if header is not None and prop is not None:
            raise ChannelError(PRECONDITION_FAILED, "hash-header and hash-property are mutually exclusive")
        if prop is not None and prop not in HASHABLE_PROPERTIES:
            raise ChannelError(PRECONDITION_FAILED, f"Unsupported property: {prop}")

    def validate_binding(self, routing_key: str, arguments: dict[str, Any]) -> None:
        if not _INTEGER.fullmatch(routing_key):
            raise ChannelError(
                PRECONDITION_FAILED, f"The binding key must be an integer: {format_term(routing_key)}"
            )
        weight = int(routing_key)
        if weight < 1:
            raise ChannelError(PRECONDITION_FAILED, "The binding key must be greater than 0")
        if weight > MAX_WEIGHT:
            raise ChannelError(PRECONDITION_FAILED, f"The binding key must not exceed {MAX_WEIGHT}")

    @staticmethod
    def _value_getter(arguments: dict[str, Any]) -> Callable[[Message], Any]:
        header = _hash_setting(arguments, "hash-header")
        if header is not None:
            return lambda message: message.headers.get(header)
        prop = _hash_setting(arguments, "hash-property")
        if prop == "timestamp":
            return _timestamp
        if prop is not None:
            return lambda message: getattr(message.properties, prop)
        return lambda message: message.routing_key

    def route(self, message: Message) -> tuple[Destination, ...]:
        ring = self._ring
        if not ring:
            return ()
        return (ring[jump_hash(stable_hash(self._hashed_value(message)), len(ring))],)

    @property
    def ring(self) -> tuple[Destination, ...]:
        """Bucket owners in bucket order (for inspection and tests)."""
        return tuple(self._ring)

    def _added(self, binding: Binding) -> None:
        # A second binding of a placed destination leaves the ring alone, as in RabbitMQ 3.11+.
        if binding.destination not in self._placed_by:
            self._place(binding)

    def _removed(self, binding: Binding) -> None:
        if self._placed_by.get(binding.destination) is not binding:
            return
        # Rebuild from the remaining bindings (bind order), so the ring stays the same function of
        # the bindings that a restart re-adds; RabbitMQ instead drops the destination until restart.
        self._ring.clear()
        self._placed_by.clear()
        for remaining in self.bindings:
            self._added(remaining)

    def _place(self, binding: Binding) -> None:
        self._placed_by[binding.destination] = binding
        self._ring.extend([binding.destination] * int(binding.routing_key))
