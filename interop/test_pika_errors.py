"""Errors: RabbitMQ's reply code and text, and that a soft error closes the channel, not the connection."""

from __future__ import annotations

from collections.abc import Callable

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

from interop.brokers import Broker
from interop.clients import pika_connection, unique


def channel_error(
    connection: pika.BlockingConnection, action: Callable[[BlockingChannel], object]
) -> tuple[int, str]:
    """Run action on a fresh channel; return the broker's channel.close code and text.

    Asynchronous methods (publish, ack) are answered by the close, which the following synchronous
    call (basic.qos, harmless here) waits for.
    """
    channel = connection.channel()
    with pytest.raises(ChannelClosedByBroker) as closed:
        action(channel)
        channel.basic_qos(prefetch_count=0)
    assert channel.is_closed
    assert connection.is_open, "a channel error must not close the connection"
    connection.channel().close()  # and the connection still opens channels
    return closed.value.reply_code, closed.value.reply_text


def test_passive_declare_of_missing_queue(connection: pika.BlockingConnection) -> None:
    name = unique("missing")
    assert channel_error(connection, lambda ch: ch.queue_declare(name, passive=True)) == (
        404,
        f"NOT_FOUND - no queue '{name}' in vhost '/'",
    )


def test_passive_declare_of_missing_exchange(connection: pika.BlockingConnection) -> None:
    name = unique("missing")
    assert channel_error(connection, lambda ch: ch.exchange_declare(name, passive=True)) == (
        404,
        f"NOT_FOUND - no exchange '{name}' in vhost '/'",
    )


def test_redeclare_queue_with_other_durable(
    channel: BlockingChannel, connection: pika.BlockingConnection
) -> None:
    name = unique("durable")
    channel.queue_declare(name, durable=False)
    code, text = channel_error(connection, lambda ch: ch.queue_declare(name, durable=True))
    assert code == 406
    assert text == (
        f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{name}' in vhost '/': "
        "received 'true' but current is 'false'"
    )
    channel.queue_delete(name)


def test_redeclare_exchange_with_other_type(
    channel: BlockingChannel, connection: pika.BlockingConnection
) -> None:
    name = unique("type")
    channel.exchange_declare(name, "direct", auto_delete=True)
    assert channel_error(connection, lambda ch: ch.exchange_declare(name, "fanout", auto_delete=True)) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{name}' in vhost '/': "
        "received 'fanout' but current is 'direct'",
    )
    channel.exchange_delete(name)


def test_publish_to_missing_exchange(connection: pika.BlockingConnection) -> None:
    name = unique("missing")
    assert channel_error(connection, lambda ch: ch.basic_publish(name, "key", b"x")) == (
        404,
        f"NOT_FOUND - no exchange '{name}' in vhost '/'",
    )


def test_ack_of_unknown_delivery_tag(connection: pika.BlockingConnection) -> None:
    assert channel_error(connection, lambda ch: ch.basic_ack(1)) == (
        406,
        "PRECONDITION_FAILED - unknown delivery tag 1",
    )


def test_declare_reserved_amq_exchange(connection: pika.BlockingConnection) -> None:
    name = f"amq.{unique('reserved')}"
    assert channel_error(connection, lambda ch: ch.exchange_declare(name, "direct")) == (
        403,
        f"ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'",
    )


def test_consume_from_missing_queue(connection: pika.BlockingConnection) -> None:
    name = unique("missing")
    assert channel_error(connection, lambda ch: ch.basic_consume(name, lambda *_: None)) == (
        404,
        f"NOT_FOUND - no queue '{name}' in vhost '/'",
    )


def test_bind_missing_queue(connection: pika.BlockingConnection) -> None:
    name = unique("missing")
    assert channel_error(connection, lambda ch: ch.queue_bind(name, "amq.direct", "key")) == (
        404,
        f"NOT_FOUND - no queue '{name}' in vhost '/'",
    )


@pytest.mark.parametrize("access", ["declare", "passive", "consume", "get", "purge", "delete"])
def test_exclusive_queue_from_another_connection(
    broker: Broker, channel: BlockingChannel, access: str
) -> None:
    name = unique("exclusive")
    channel.queue_declare(name, exclusive=True)
    actions: dict[str, Callable[[BlockingChannel], object]] = {
        "declare": lambda ch: ch.queue_declare(name),
        "passive": lambda ch: ch.queue_declare(name, passive=True),
        "consume": lambda ch: ch.basic_consume(name, lambda *_: None),
        "get": lambda ch: ch.basic_get(name),
        "purge": lambda ch: ch.queue_purge(name),
        "delete": lambda ch: ch.queue_delete(name),
    }
    with pika_connection(broker.url) as other:
        code, text = channel_error(other, actions[access])
    assert code == 405
    assert text.startswith(
        f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost '/'"
    )


def test_delete_if_unused_and_if_empty(channel: BlockingChannel, connection: pika.BlockingConnection) -> None:
    name = unique("inuse")
    channel.queue_declare(name)
    channel.basic_publish("", name, b"x")
    tag = channel.basic_consume(name, lambda *_: None)
    assert channel_error(connection, lambda ch: ch.queue_delete(name, if_unused=True)) == (
        406,
        f"PRECONDITION_FAILED - queue '{name}' in vhost '/' in use",
    )
    channel.basic_cancel(tag)
    assert channel_error(connection, lambda ch: ch.queue_delete(name, if_empty=True)) == (
        406,
        f"PRECONDITION_FAILED - queue '{name}' in vhost '/' not empty",
    )
    channel.queue_delete(name)


def test_exchange_delete_if_unused(channel: BlockingChannel, connection: pika.BlockingConnection) -> None:
    exchange, name = unique("bound"), unique("q")
    channel.exchange_declare(exchange, "direct")
    channel.queue_declare(name, exclusive=True)
    channel.queue_bind(name, exchange, "key")
    assert channel_error(connection, lambda ch: ch.exchange_delete(exchange, if_unused=True)) == (
        406,
        f"PRECONDITION_FAILED - exchange '{exchange}' in vhost '/' in use",
    )
    channel.exchange_delete(exchange)


def test_direct_reply_to_misuse(connection: pika.BlockingConnection) -> None:
    reply_to = pika.BasicProperties(reply_to="amq.rabbitmq.reply-to")
    assert channel_error(connection, lambda ch: ch.basic_publish("", unique("rpc"), b"x", reply_to)) == (
        406,
        "PRECONDITION_FAILED - fast reply consumer does not exist",
    )
    assert channel_error(
        connection, lambda ch: ch.basic_consume("amq.rabbitmq.reply-to", lambda *_: None)
    ) == (406, "PRECONDITION_FAILED - reply consumer cannot acknowledge")


def test_wrong_password_is_refused(broker: Broker) -> None:
    params = pika.URLParameters(broker.url.replace("guest:guest", "guest:wrong"))
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as refused:
        pika.BlockingConnection(params)
    assert "ACCESS_REFUSED" in str(refused.value)


def test_unknown_vhost_is_refused(broker: Broker) -> None:
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as refused:
        pika.BlockingConnection(pika.URLParameters(f"{broker.url}nowhere"))
    assert "(530) 'NOT_ALLOWED - vhost nowhere not found'" in str(refused.value)
