"""Quorum and stream queues are durable, shared and kept: RabbitMQ 3.10 refuses a new one declared
auto-delete, exclusive or non-durable with 406 PRECONDITION_FAILED, checking in that order (so auto-delete
wins over the others, and an exclusive declare, never durable, is refused for its exclusivity), after the
arguments' own checks and the reserved prefix. A server-named quorum or stream queue is refused before
anything else. Classic queues take every combination. A redeclare of an existing quorum queue is an
equivalence question instead (interop/test_queue_equivalence.py's rules), and a passive declare takes
whatever flags it is given.
"""

from __future__ import annotations

import itertools
from typing import Any

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from interop.brokers import Broker
from interop.clients import pika_connection, unique


def expected(kind: str, durable: bool, auto_delete: bool, exclusive: bool) -> str:
    if kind == "classic":
        return "ok"
    if auto_delete:
        problem = "auto-delete"
    elif exclusive:
        problem = "exclusive-owner"
    elif not durable:
        problem = "non-durable"
    else:
        return "ok"
    return f"406 PRECONDITION_FAILED - invalid property '{problem}' for queue 'Q' in vhost '/'"


def declare(connection: pika.BlockingConnection, name: str, **options: Any) -> str:
    channel = connection.channel()
    try:
        declared = channel.queue_declare(name, **options).method.queue
    except ChannelClosedByBroker as closed:
        assert connection.is_open, "a declare error must close only the channel"
        text = f"{closed.reply_code} {closed.reply_text}"
        return text.replace(f"'{name}'", "'Q'") if name else text
    channel.queue_delete(declared)
    channel.close()
    return "ok"


FLAGS = list(itertools.product((True, False), repeat=3))


@pytest.mark.parametrize("kind", ["quorum", "stream", "classic"])
@pytest.mark.parametrize(("durable", "auto_delete", "exclusive"), FLAGS)
def test_new_queue_properties(
    broker: Broker, kind: str, durable: bool, auto_delete: bool, exclusive: bool
) -> None:
    name = unique(f"properties-{kind}")
    with pika_connection(broker.url) as connection:
        outcome = declare(
            connection, name, durable=durable, auto_delete=auto_delete, exclusive=exclusive,
            arguments={"x-queue-type": kind},
        )
        assert outcome == expected(kind, durable, auto_delete, exclusive)
        if outcome != "ok":  # nothing was made
            channel = connection.channel()
            with pytest.raises(ChannelClosedByBroker) as missing:
                channel.queue_declare(name, passive=True)
            assert missing.value.reply_code == 404


@pytest.mark.parametrize(
    ("options", "outcome"),
    [
        # The arguments are checked first, then the properties.
        ({"auto_delete": True, "arguments": {"x-queue-type": "quorum", "x-max-priority": 5}},
         "406 PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'Q' in vhost '/' of queue type "
         "rabbit_quorum_queue"),
        ({"durable": False, "arguments": {"x-queue-type": "quorum", "x-max-length": -1}},
         "406 PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'Q' in vhost '/': "
         "{value_negative,-1}"),
        ({"durable": False, "arguments": {"x-queue-type": "stream", "x-max-priority": 5}},
         "406 PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'Q' in vhost '/' of queue type "
         "rabbit_stream_queue"),
        ({"durable": False, "arguments": {"x-queue-type": "quorum", "x-dead-letter-exchange": 5}},
         "406 PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'Q' "
         "in vhost '/'"),
    ],
)
def test_arguments_are_checked_before_properties(
    broker: Broker, options: dict[str, Any], outcome: str
) -> None:
    with pika_connection(broker.url) as connection:
        assert declare(connection, unique("properties-order"), **options) == outcome


def test_the_reserved_prefix_is_checked_before_properties(broker: Broker) -> None:
    with pika_connection(broker.url) as connection:
        quorum = {"x-queue-type": "quorum"}
        outcome = declare(connection, "amq.properties", auto_delete=True, arguments=quorum)
        assert outcome == "403 ACCESS_REFUSED - queue name 'Q' contains reserved prefix 'amq.*'"


@pytest.mark.parametrize("kind", ["quorum", "stream"])
@pytest.mark.parametrize(
    "options",
    [
        {"durable": True},
        {"exclusive": True},
        {"durable": False, "auto_delete": True},
        {"durable": True, "arguments": {"x-max-length": -1}},
        {"durable": True, "arguments": {"x-max-priority": 5}},
    ],
)
def test_server_named_quorum_and_stream_queues_are_refused_first(
    broker: Broker, kind: str, options: dict[str, Any]
) -> None:
    flags = {key: value for key, value in options.items() if key != "arguments"}
    arguments = {"x-queue-type": kind, **options.get("arguments", {})}
    with pika_connection(broker.url) as connection:
        assert declare(connection, "", arguments=arguments, **flags) == (
            f"406 PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_{kind}_queue"
        )


def test_a_server_named_classic_queue_is_still_made(broker: Broker) -> None:
    with pika_connection(broker.url) as connection:
        assert declare(connection, "", exclusive=True, arguments={"x-queue-type": "classic"}) == "ok"


def test_an_existing_quorum_queue_is_redeclared_by_equivalence_and_passively(broker: Broker) -> None:
    name = unique("properties-existing")
    quorum = {"x-queue-type": "quorum"}
    with pika_connection(broker.url) as connection:
        connection.channel().queue_declare(name, durable=True, arguments=quorum)
        assert declare_kept(connection, name, durable=False, arguments=quorum) == (
            f"406 PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{name}' in vhost '/': received "
            "'false' but current is 'true'"
        )
        assert declare_kept(connection, name, durable=True, auto_delete=True, arguments=quorum) == (
            f"406 PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '{name}' in vhost '/': "
            "received 'true' but current is 'false'"
        )
        assert declare_kept(connection, name, passive=True, durable=False, auto_delete=True) == "ok"
        connection.channel().queue_delete(name)


def declare_kept(connection: pika.BlockingConnection, name: str, **options: Any) -> str:
    """Like `declare`, but the queue stays."""
    channel = connection.channel()
    try:
        channel.queue_declare(name, **options)
    except ChannelClosedByBroker as closed:
        return f"{closed.reply_code} {closed.reply_text}"
    channel.close()
    return "ok"
