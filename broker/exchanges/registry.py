"""Exchange types by the name exchange.declare uses."""

from __future__ import annotations

from leveret.amqp.constants import COMMAND_INVALID
from leveret.amqp.errors import ConnectionLevelError

from .base import Exchange
from .consistent_hash import ConsistentHashExchange
from .direct import DirectExchange
from .fanout import FanoutExchange
from .headers import HeadersExchange
from .topic import TopicExchange

EXCHANGE_TYPES: dict[str, type[Exchange]] = {
    cls.kind: cls
    for cls in (DirectExchange, FanoutExchange, TopicExchange, HeadersExchange, ConsistentHashExchange)
}


def exchange_class(kind: str) -> type[Exchange]:
    """The class for an exchange type, or RabbitMQ 3.x's answer to an unknown one.

    RabbitMQ up to 3.13.2 closes the connection with 503; 3.13.3 and 4.x close the channel with
    406 PRECONDITION_FAILED and the same text.
    """
    try:
        return EXCHANGE_TYPES[kind]
    except KeyError:
        raise ConnectionLevelError(COMMAND_INVALID, f"unknown exchange type '{kind}'") from None
