"""Exclusive consumers and locked queues, as RabbitMQ answers them (rabbit_channel's basic.consume and
rabbit_amqqueue_process's check_exclusive_access; 3.10 = 3.13):

- A classic queue with an exclusive consumer takes no other consumer, and a classic queue with consumers
  takes no exclusive one: 403 ACCESS_REFUSED "queue 'q' in vhost '/' in exclusive use", whether the second
  consume comes on the same channel, another channel or another connection. A single-active-consumer queue
  refuses every exclusive consume. basic.get is not a consumer: it is served.
- Quorum and stream queues take the exclusive flag and ignore it.
- An exclusive queue (declared exclusive) is locked to its connection: consume and get from another one are
  405 RESOURCE_LOCKED, with or without the exclusive flag.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
from pika.exceptions import ChannelClosedByBroker

from interop.brokers import Broker
from interop.clients import pika_connection, unique

IN_USE = "403 ACCESS_REFUSED - queue 'Q' in vhost '/' in exclusive use"
LOCKED = (
    "405 RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'Q' in vhost '/'. It could be "
    "originally declared on another connection or the exclusive property value does not match that of the "
    "original declaration."
)
CLASSIC: dict[str, Any] = {}
SINGLE_ACTIVE: dict[str, Any] = {"arguments": {"x-single-active-consumer": True}}
QUORUM: dict[str, Any] = {"durable": True, "arguments": {"x-queue-type": "quorum"}}
STREAM: dict[str, Any] = {"durable": True, "arguments": {"x-queue-type": "stream"}}


@pytest.fixture
def connections(broker: Broker) -> Iterator[tuple[pika.BlockingConnection, pika.BlockingConnection]]:
    with pika_connection(broker.url) as first, pika_connection(broker.url) as second:
        yield first, second


def outcome(name: str, action: Any) -> str:
    try:
        action()
    except ChannelClosedByBroker as closed:
        return f"{closed.reply_code} {closed.reply_text}".replace(name, "Q")
    return "ok"


def consume(channel: Any, name: str, exclusive: bool) -> str:
    # A stream queue needs a prefetch for its consumers; harmless elsewhere.
    return outcome(name, lambda: (channel.basic_qos(prefetch_count=10),
                                  channel.basic_consume(name, lambda *_: None, exclusive=exclusive)))


# The first consumer (on connection A, channel 1), then the second: where it comes from, whether it asks
# for exclusivity, and RabbitMQ's answer.
CASES = [
    (CLASSIC, True, "same channel", False, IN_USE),
    (CLASSIC, True, "same channel", True, IN_USE),
    (CLASSIC, True, "other channel", False, IN_USE),
    (CLASSIC, True, "other channel", True, IN_USE),
    (CLASSIC, True, "other connection", False, IN_USE),
    (CLASSIC, True, "other connection", True, IN_USE),
    (CLASSIC, False, "same channel", True, IN_USE),
    (CLASSIC, False, "other channel", True, IN_USE),
    (CLASSIC, False, "other connection", True, IN_USE),
    (CLASSIC, False, "other connection", False, "ok"),
    (SINGLE_ACTIVE, False, "other connection", True, IN_USE),
    (SINGLE_ACTIVE, False, "other connection", False, "ok"),
    (QUORUM, True, "other connection", False, "ok"),
    (QUORUM, True, "other connection", True, "ok"),
    (QUORUM, False, "other connection", True, "ok"),
    (STREAM, True, "other connection", False, "ok"),
    (STREAM, False, "other connection", True, "ok"),
]


@pytest.mark.parametrize(("declare", "first", "where", "second", "expected"), CASES)
def test_second_consume(
    connections: tuple[pika.BlockingConnection, pika.BlockingConnection],
    declare: dict[str, Any],
    first: bool,
    where: str,
    second: bool,
    expected: str,
) -> None:
    a, b = connections
    name = unique("exclusive-consume")
    a.channel().queue_declare(name, **declare)
    channel = a.channel()
    assert consume(channel, name, first) == "ok"
    other = {"same channel": channel, "other channel": a.channel(), "other connection": b.channel()}[where]
    assert consume(other, name, second) == expected
    assert a.is_open and b.is_open  # a channel error
    a.channel().queue_delete(name)


def test_a_single_active_consumer_queue_refuses_an_exclusive_consumer_even_alone(
    connections: tuple[pika.BlockingConnection, pika.BlockingConnection],
) -> None:
    a, _ = connections
    name = unique("sac-exclusive")
    a.channel().queue_declare(name, **SINGLE_ACTIVE)
    assert consume(a.channel(), name, True) == IN_USE
    a.channel().queue_delete(name)


def test_get_is_served_beside_an_exclusive_consumer_and_a_cancel_frees_the_queue(
    connections: tuple[pika.BlockingConnection, pika.BlockingConnection],
) -> None:
    a, b = connections
    name = unique("exclusive-get")
    a.channel().queue_declare(name)
    holder = a.channel()
    tag = holder.basic_consume(name, lambda *_: None, exclusive=True)
    assert outcome(name, lambda: b.channel().basic_get(name)) == "ok"
    assert outcome(name, lambda: a.channel().basic_get(name)) == "ok"
    holder.basic_cancel(tag)
    assert consume(b.channel(), name, False) == "ok"
    a.channel().queue_delete(name)


@pytest.mark.parametrize("exclusive", [False, True])
def test_an_exclusive_queue_is_locked_to_its_connection(
    connections: tuple[pika.BlockingConnection, pika.BlockingConnection], exclusive: bool
) -> None:
    a, b = connections
    name = unique("locked")
    a.channel().queue_declare(name, exclusive=True)
    assert consume(b.channel(), name, exclusive) == LOCKED
    assert outcome(name, lambda: b.channel().basic_get(name)) == LOCKED
    assert consume(a.channel(), name, exclusive) == "ok"


@pytest.mark.parametrize("declare", [QUORUM, STREAM], ids=["quorum", "stream"])
def test_a_quorum_or_stream_queue_refuses_a_consumer_under_a_global_prefetch(
    broker: Broker, declare: dict[str, Any]
) -> None:
    """RabbitMQ 3.10: basic.qos(global=true) is taken, but these queue types cannot share a channel-wide
    prefetch, so their basic.consume closes the connection (540)."""
    name = unique("global-qos")
    with pika_connection(broker.url) as setup:
        setup.channel().queue_declare(name, **declare)
    try:
        with pika_connection(broker.url) as connection:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=10)  # a stream's consumer needs one of its own first
            channel.basic_qos(prefetch_count=10, global_qos=True)
            with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
                channel.basic_consume(name, lambda *_: None)
        assert (closed.value.reply_code, closed.value.reply_text.replace(name, "Q")) == (
            540, "NOT_IMPLEMENTED - queue 'Q' in vhost '/' does not support global qos"
        )
    finally:
        with pika_connection(broker.url) as cleanup:
            cleanup.channel().queue_delete(name)
