"""Durability across a clean stop (SIGTERM) and a crash (SIGKILL) of the broker process."""

from __future__ import annotations

from collections.abc import Callable

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

from interop.brokers import Broker
from interop.clients import pika_connection, queue_depth, unique

PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


def publish_confirmed(channel: BlockingChannel, exchange: str, key: str, bodies: range,
                      props: pika.BasicProperties) -> None:
    for i in bodies:
        channel.basic_publish(exchange, key, str(i).encode(), props)


def test_durable_state_survives_stop_and_kill(private_broker: Callable[[], Broker]) -> None:
    broker = private_broker()
    durable_queue, transient_queue, exchange = unique("durable"), unique("transient"), unique("durable-x")
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(durable_queue, durable=True)
        channel.queue_declare(transient_queue, durable=False)
        channel.exchange_declare(exchange, "direct", durable=True)
        channel.queue_bind(durable_queue, exchange, "k")
        publish_confirmed(channel, "", durable_queue, range(0, 50), PERSISTENT)
        # Transient messages do not outlive the broker, even in a durable queue.
        publish_confirmed(channel, "", durable_queue, range(1000, 1010), TRANSIENT)
        publish_confirmed(channel, "", transient_queue, range(5), PERSISTENT)

    assert broker.stop() == 0, "SIGTERM should stop the broker cleanly"
    broker.start()
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        assert queue_depth(channel, durable_queue) == 50
        try:
            channel.queue_declare(transient_queue, passive=True)
            raise AssertionError("the transient queue survived a restart")
        except ChannelClosedByBroker as gone:
            assert gone.reply_code == 404
        channel = connection.channel()
        channel.confirm_delivery()
        # The durable exchange and its binding are back: publishing through them still routes.
        publish_confirmed(channel, exchange, "k", range(50, 80), PERSISTENT)

    # Confirmed persistent messages are on disk: a crash loses none of them.
    old_pid = broker.pid
    broker.kill()
    broker.start()
    assert broker.pid != old_pid
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        assert queue_depth(channel, durable_queue) == 80
        bodies = [int(channel.basic_get(durable_queue, auto_ack=True)[2]) for _ in range(80)]
        assert bodies == list(range(80))
        channel.queue_delete(durable_queue)
        channel.exchange_delete(exchange)
