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

# RabbitMQ says "invalid" rather than "unknown" exchange type when the name happens to be an existing
# Erlang atom in the node. Common names that are (checked against RabbitMQ 3.10.8); others are unknown.
_ERLANG_ATOMS = frozenset(
    {
        "", "bad", "bar", "classic", "default", "dummy", "error", "exchange", "false", "foo", "hash",
        "header", "invalid", "invalid_type", "local", "missing", "none", "ok", "queue", "quorum",
        "random", "stream", "test", "true", "type", "undefined", "unknown",
    }
)  # fmt: skip


def exchange_class(kind: str) -> type[Exchange]:
    """The class for an exchange type, or RabbitMQ 3.x's answer to an unknown one.

    RabbitMQ up to 3.13.2 closes the connection with 503 COMMAND_INVALID; 3.13.3 and 4.x close the
    channel with 406 PRECONDITION_FAILED and the same texts.
    """
    cls = EXCHANGE_TYPES.get(kind)
    if cls is None:
        adjective = "invalid" if kind in _ERLANG_ATOMS else "unknown"
        raise ConnectionLevelError(COMMAND_INVALID, f"{adjective} exchange type '{kind}'")
    return cls
