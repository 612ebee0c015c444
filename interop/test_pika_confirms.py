"""Publisher confirms and mandatory publishing (basic.return) with pika."""

from __future__ import annotations

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import UnroutableError
from pika.spec import Basic

from interop.clients import pump_until, queue_depth, unique


def test_confirmed_publishes_are_queued(channel: BlockingChannel) -> None:
    name = unique("confirm")
    channel.queue_declare(name, exclusive=True)
    channel.confirm_delivery()
    for i in range(100):
        # With confirms on, a blocking publish returns only after the broker's basic.ack.
        channel.basic_publish("", name, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    assert queue_depth(channel, name) == 100


def test_mandatory_unroutable_raises_with_confirms(channel: BlockingChannel) -> None:
    channel.confirm_delivery()
    key = unique("nowhere")
    with pytest.raises(UnroutableError) as unroutable:
        channel.basic_publish("amq.direct", key, b"lost", mandatory=True)
    [returned] = unroutable.value.messages
    assert isinstance(returned.method, Basic.Return)
    assert (returned.method.reply_code, returned.method.reply_text) == (312, "NO_ROUTE")
    assert (returned.method.exchange, returned.method.routing_key, returned.body) == (
        "amq.direct",
        key,
        b"lost",
    )
    assert channel.is_open


def test_mandatory_unroutable_is_returned_without_confirms(
    channel: BlockingChannel, connection: pika.BlockingConnection
) -> None:
    returns: list[tuple[Basic.Return, pika.BasicProperties, bytes]] = []
    channel.add_on_return_callback(lambda _ch, method, props, body: returns.append((method, props, body)))
    key = unique("nowhere")
    channel.basic_publish("", key, b"lost", pika.BasicProperties(message_id="m-1"), mandatory=True)
    pump_until(connection, lambda: bool(returns), what="basic.return")
    method, props, body = returns[0]
    assert (method.reply_code, method.reply_text, method.exchange, method.routing_key) == (
        312,
        "NO_ROUTE",
        "",
        key,
    )
    assert (props.message_id, body) == ("m-1", b"lost")


def test_unroutable_without_mandatory_is_dropped_and_confirmed(channel: BlockingChannel) -> None:
    channel.confirm_delivery()
    channel.basic_publish("amq.direct", unique("nowhere"), b"dropped")  # acked, nothing returned
    assert channel.is_open
