"""What a queue's (validated) arguments ask of its message lifecycle, parsed once at declare."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leveret.broker.queues.arguments import queue_type

REJECT_PUBLISH = "reject-publish"
REJECT_PUBLISH_DLX = "reject-publish-dlx"


def _int(arguments: dict[str, Any], key: str) -> int | None:
    value = arguments.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(arguments: dict[str, Any], key: str) -> str | None:
    value = arguments.get(key)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class QueueSettings:
    message_ttl: int | None = None  # ms
    expires: int | None = None  # ms without consumers, basic.get or redeclare before the queue goes
    max_length: int | None = None  # ready messages
    max_length_bytes: int | None = None  # ready message bodies
    overflow: str = "drop-head"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    dead_letter_strategy: str = "at-most-once"
    max_priority: int | None = None
    single_active_consumer: bool = False
    # Quorum queues count returns of each message and show it in x-delivery-count; the limit is optional.
    counts_deliveries: bool = False
    delivery_limit: int | None = None

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> QueueSettings:
        return cls(
            message_ttl=_int(arguments, "x-message-ttl"),
            expires=_int(arguments, "x-expires"),
            max_length=_int(arguments, "x-max-length"),
            max_length_bytes=_int(arguments, "x-max-length-bytes"),
            overflow=_text(arguments, "x-overflow") or "drop-head",
            dead_letter_exchange=_text(arguments, "x-dead-letter-exchange"),
            dead_letter_routing_key=_text(arguments, "x-dead-letter-routing-key"),
            dead_letter_strategy=_text(arguments, "x-dead-letter-strategy") or "at-most-once",
            max_priority=_int(arguments, "x-max-priority"),
            single_active_consumer=arguments.get("x-single-active-consumer") is True,
            counts_deliveries=queue_type(arguments) == "quorum",
            delivery_limit=_int(arguments, "x-delivery-limit"),
        )

    @property
    def plain(self) -> bool:
        """Nothing here needs more than the plain FIFO queue."""
        return self == PLAIN

    @property
    def at_least_once(self) -> bool:
        """Dead-lettered messages stay until their targets have them: RabbitMQ's rule, a quorum queue with
        a dead-letter exchange, the at-least-once strategy and reject-publish overflow (with any other
        overflow it falls back to at-most-once, and says so in its log)."""
        return (
            self.counts_deliveries
            and self.dead_letter_exchange is not None
            and self.dead_letter_strategy == "at-least-once"
            and self.overflow == REJECT_PUBLISH
        )

    @property
    def limited(self) -> bool:
        return self.max_length is not None or self.max_length_bytes is not None


PLAIN = QueueSettings()
