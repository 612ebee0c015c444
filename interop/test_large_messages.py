"""Large messages: bodies of 20-22 MB (what several client libraries' test suites publish) round trip, and
the default max_message_size is RabbitMQ 3.x's 128 MiB (3.13's, the version Leveret advertises; 3.10 here
has the same). bench/large_message.py measures what a 100 MB message costs in memory."""

from __future__ import annotations

import os

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

from interop.brokers import Broker
from interop.clients import pika_connection, unique

MB = 1_000_000
MAX_MESSAGE_SIZE = 128 * 1024 * 1024


def round_trip(channel: BlockingChannel, queue: str, body: bytes, delivery_mode: int) -> None:
    channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=delivery_mode))
    for method, properties, received in channel.consume(queue, inactivity_timeout=60):
        assert method is not None, "no delivery within 60 s"
        assert len(received) == len(body) and received == body
        assert properties.delivery_mode == delivery_mode
        channel.basic_ack(method.delivery_tag)
        break
    channel.cancel()


@pytest.mark.parametrize("durable", [False, True], ids=["transient", "persistent"])
def test_bodies_of_20_to_22_mb_round_trip(broker: Broker, durable: bool) -> None:
    queue = unique("large")
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, durable=durable)
        channel.confirm_delivery()
        for size in (20 * MB, 21 * MB, 22 * MB):
            round_trip(channel, queue, os.urandom(size), 2 if durable else 1)
        assert channel.queue_declare(queue, passive=True).method.message_count == 0
        channel.queue_delete(queue)


def test_a_body_over_128_mib_is_refused_with_rabbitmqs_error(broker: Broker) -> None:
    queue = unique("too-large")
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, auto_delete=True)
        size = MAX_MESSAGE_SIZE + 1
        with pytest.raises(ChannelClosedByBroker) as closed:
            channel.basic_publish("", queue, bytes(size))
            channel.basic_qos(prefetch_count=0)  # answered by the channel.close
        assert (closed.value.reply_code, closed.value.reply_text) == (
            406,
            f"PRECONDITION_FAILED - message size {size} is larger than configured max size "
            f"{MAX_MESSAGE_SIZE}",
        )
        assert connection.is_open
        check = connection.channel()
        assert check.queue_declare(queue, passive=True).method.message_count == 0
        # A body of exactly the maximum is taken.
        check.basic_publish("", queue, bytes(MAX_MESSAGE_SIZE))
        method, _properties, body = check.basic_get(queue, auto_ack=True)
        assert method is not None and len(body) == MAX_MESSAGE_SIZE
