"""Per-message TTL: the `expiration` property, checked at publish as RabbitMQ does; a message's deadline."""

from __future__ import annotations

import re

from leveret.amqp.constants import PRECONDITION_FAILED
from leveret.amqp.errors import ChannelError
from leveret.broker.message import Message
from leveret.broker.queues.arguments import MAX_EXPIRY_MS

# What Erlang's string:to_integer/1 reads: an optional sign, then digits; the rest is left over.
_LEADING_INTEGER = re.compile(r"[+-]?[0-9]+")


def check_expiration(expiration: str) -> None:
    """406 PRECONDITION_FAILED with RabbitMQ's text unless `expiration` is a TTL in ms (0 to ten years)."""
    match = _LEADING_INTEGER.match(expiration)
    if match is None:
        problem = "no_integer"
    elif match.end() < len(expiration):
        rest = expiration[match.end() :].replace("\\", "\\\\").replace('"', '\\"')
        problem = f'{{leftover_string,"{rest}"}}'
    else:
        value = int(match.group())
        if value < 0:
            problem = f"{{value_negative,{value}}}"
        elif value > MAX_EXPIRY_MS:
            problem = f"{{value_too_large,{value}}}"
        else:
            return
    raise ChannelError(PRECONDITION_FAILED, f"invalid expiration '{expiration}': {problem}")


def deadline(message: Message, queue_ttl: int | None, now: float) -> float | None:
    """When the message expires in a queue whose own TTL is `queue_ttl` ms: the lower TTL wins."""
    ttl = queue_ttl
    if message.expiration is not None:
        # Checked at publish, so int() reads it as Erlang did.
        message_ttl = int(message.expiration)
        if ttl is None or message_ttl < ttl:
            ttl = message_ttl
    return None if ttl is None else now + ttl / 1000
