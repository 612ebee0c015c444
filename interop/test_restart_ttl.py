"""Message TTL across a broker restart, with pika on real time: a persistent message's expiry is kept with it
(RabbitMQ keeps it as an absolute time), so one whose TTL ran out while the broker was down expires right
after the restart, dead-lettered with reason `expired`, and one with time left keeps only the rest."""

from __future__ import annotations

import time
from collections.abc import Callable

import pika
from pika.adapters.blocking_connection import BlockingChannel

from interop.brokers import Broker
from interop.clients import pika_connection, queue_depth, unique, wait_until

PERSISTENT = pika.BasicProperties(delivery_mode=2)
# A TTL that outlasts a restart, even on a loaded machine (Leveret: 0.5-2.5 s, RabbitMQ: about 5.5 s).
TTL_PAST_A_RESTART = {"leveret": 4.0, "rabbitmq": 10.0}


def get_all(channel: BlockingChannel, queue: str) -> list[tuple[bytes, pika.BasicProperties]]:
    got = []
    while (message := channel.basic_get(queue, auto_ack=True))[0] is not None:
        got.append((message[2], message[1]))
    return got


def test_messages_whose_ttl_ran_out_while_the_broker_was_down_are_dead_lettered_after_the_restart(
    private_broker: Callable[[], Broker],
) -> None:
    ttl = 1.5
    broker = private_broker()
    source, target, exchange = unique("ttl-down"), unique("ttl-dead"), unique("ttl-dlx")
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.exchange_declare(exchange, "fanout", durable=True)
        channel.queue_declare(target, durable=True)
        channel.queue_bind(target, exchange)
        arguments = {"x-message-ttl": int(ttl * 1000), "x-dead-letter-exchange": exchange}
        channel.queue_declare(source, durable=True, arguments=arguments)
        for body in (b"one", b"two", b"three"):
            channel.basic_publish("", source, body, PERSISTENT)
    published = time.monotonic()
    assert broker.stop() == 0
    time.sleep(max(0.0, published + ttl + 0.5 - time.monotonic()))

    broker.start()
    restarted = time.monotonic()
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        wait_until(lambda: queue_depth(channel, source) == 0, timeout=10, what="the expired messages to go")
        # A TTL counted again from the restart would have kept them for another 1.5 s.
        assert time.monotonic() - restarted < ttl - 0.3
        wait_until(lambda: queue_depth(channel, target) == 3, timeout=5, what="the dead-lettered copies")
        got = get_all(channel, target)
    assert [body for body, _ in got] == [b"one", b"two", b"three"]
    for _, properties in got:
        (death,) = properties.headers["x-death"]
        assert (death["reason"], death["queue"], death["count"]) == ("expired", source, 1)
        assert death["exchange"] == "" and death["routing-keys"] == [source]


def test_a_message_with_time_left_keeps_only_the_rest_of_its_ttl_after_a_restart(
    private_broker: Callable[[], Broker],
) -> None:
    broker = private_broker()
    ttl = TTL_PAST_A_RESTART[broker.kind]
    name = unique("ttl-left")
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(name, durable=True)
        properties = pika.BasicProperties(delivery_mode=2, expiration=str(int(ttl * 1000)))
        channel.basic_publish("", name, b"half-life", properties)
    published = time.monotonic()
    assert broker.stop() == 0
    time.sleep(max(0.0, published + 0.5 - time.monotonic()))

    broker.start()
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        restarted_after = time.monotonic() - published
        assert queue_depth(channel, name) == 1, f"gone right after a restart {restarted_after:.2f} s in"
        wait_until(lambda: queue_depth(channel, name) == 0, timeout=10, what="the message to expire")
        gone = time.monotonic() - published
        assert channel.basic_get(name, auto_ack=True)[0] is None
    # Gone at about its TTL from the publish, not from the restart (which was at least 0.5 s later).
    assert ttl - 0.1 < gone < ttl + 0.4, f"expired {gone:.2f} s after the publish"
