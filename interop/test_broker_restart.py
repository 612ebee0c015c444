"""Durability across a clean stop (SIGTERM) and a crash (SIGKILL) of the broker process."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

from interop.brokers import Broker
from interop.clients import NODE_DIR, client_env, pika_connection, queue_depth, run_client, unique, wait_until

PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


def publish_confirmed(
    channel: BlockingChannel, exchange: str, key: str, bodies: range, props: pika.BasicProperties
) -> None:
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
        with pytest.raises(ChannelClosedByBroker) as gone:
            channel.queue_declare(transient_queue, passive=True)
        assert gone.value.reply_code == 404, "the transient queue survived a restart"
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


def get_all(channel: BlockingChannel, queue: str) -> list[tuple[bytes, bool]]:
    """(body, redelivered) of every message in the queue, taken with auto-ack."""
    got = []
    while (message := channel.basic_get(queue, auto_ack=True))[0] is not None:
        got.append((message[2], message[0].redelivered))
    return got


def test_recovered_messages_are_flagged_redelivered_after_a_crash(
    private_broker: Callable[[], Broker],
) -> None:
    """After a clean stop only delivered messages come back redelivered; after a crash all of them do, since
    the broker cannot know which deliveries reached a client (RabbitMQ's classic queues do the same)."""
    broker = private_broker()
    name = unique("redelivered")
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(name, durable=True)
        publish_confirmed(channel, "", name, range(3), PERSISTENT)
        assert channel.basic_get(name)[2] == b"0"  # delivered, never acked: requeued at close
    broker.stop()
    broker.start()
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        assert [channel.basic_get(name)[0].redelivered for _ in range(3)] == [True, False, False]
    broker.kill()
    broker.start()
    with pika_connection(broker.url) as connection:
        assert get_all(connection.channel(), name) == [(b"0", True), (b"1", True), (b"2", True)]


@pytest.mark.usefixtures("node_modules")
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_amqplib_persistent_messages_survive_a_restart(
    private_broker: Callable[[], Broker], tmp_path: Path, how: str
) -> None:
    broker = private_broker()
    name = unique("node-restart")
    published = run_client(
        ["node", str(NODE_DIR / "confirm_publish.js"), name, "20"], tmp_path, client_env(broker.url)
    )
    assert published.splitlines()[0] == "confirmed 20"
    if how == "stop":
        assert broker.stop() == 0
    else:
        broker.kill()
    broker.start()
    drained = run_client(
        ["node", str(NODE_DIR / "drain_queue.js"), name, "20"], tmp_path, client_env(broker.url)
    )
    # Never delivered before: redelivered only after a crash, when the broker cannot know.
    flag = "true" if how == "kill" else "false"
    assert drained.splitlines() == [f"message {i} {flag}" for i in range(20)]


class ConfirmingPublisher(threading.Thread):
    """Publishes persistent messages numbered on from `start` with confirms until its connection dies."""

    def __init__(self, url: str, queue: str, start: int) -> None:
        super().__init__(daemon=True)
        self.url, self.queue, self.next = url, queue, start
        self.attempted: set[int] = set()
        self.confirmed: set[int] = set()

    def run(self) -> None:
        try:
            with pika_connection(self.url) as connection:
                channel = connection.channel()
                channel.confirm_delivery()
                while True:
                    self.attempted.add(self.next)
                    channel.basic_publish("", self.queue, str(self.next).encode(), PERSISTENT)
                    self.confirmed.add(self.next)
                    self.next += 1
        except (pika.exceptions.AMQPError, OSError):
            return  # the broker was killed under us: what was confirmed must survive


@pytest.mark.slow
def test_confirmed_messages_survive_crashes_mid_publish(private_broker: Callable[[], Broker]) -> None:
    broker = private_broker()
    name = unique("crash")
    with pika_connection(broker.url) as connection:
        connection.channel().queue_declare(name, durable=True)
    attempted: set[int] = set()
    confirmed: set[int] = set()
    chance = random.Random(1)
    for _cycle in range(5):
        publisher = ConfirmingPublisher(broker.url, name, start=max(attempted, default=-1) + 1)
        publisher.start()
        target = chance.randint(200, 1500)
        wait_until(lambda p=publisher, n=target: len(p.confirmed) >= n, timeout=60, what=f"{target} confirms")
        broker.kill()
        publisher.join(30)
        assert not publisher.is_alive()
        attempted |= publisher.attempted
        confirmed |= publisher.confirmed
        broker.start()

    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        present = []
        while (got := channel.basic_get(name, auto_ack=True))[0] is not None:
            present.append(int(got[2]))
    assert len(present) == len(set(present)), "a message was duplicated"
    assert confirmed <= set(present), f"confirmed messages lost: {sorted(confirmed - set(present))[:20]}"
    assert set(present) <= attempted
    assert present == sorted(present), "the queue lost its FIFO order across crashes"


def test_a_quorum_queues_delivery_count_survives_a_restart(private_broker: Callable[[], Broker]) -> None:
    """Returns are logged: after a restart x-delivery-count goes on from where it was, and the delivery
    limit counts the deliveries before the restart too."""
    broker = private_broker()
    name, dead = unique("counted"), unique("counted-dead")
    arguments = {
        "x-queue-type": "quorum", "x-delivery-limit": 2,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead,
    }  # fmt: skip
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(name, durable=True, arguments=arguments)
        channel.basic_publish("", name, b"poison", PERSISTENT)
        method, _properties, _body = channel.basic_get(name)
        channel.basic_nack(method.delivery_tag, requeue=True)  # its first return
        wait_until(lambda: queue_depth(channel, name) == 1, what="the return")

    assert broker.stop() == 0
    broker.start()
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        channel.queue_declare(dead, durable=True)
        counts = []
        for method, properties, _ in channel.consume(name, inactivity_timeout=1.5):
            if method is None:
                break
            counts.append((method.redelivered, (properties.headers or {}).get("x-delivery-count")))
            channel.basic_nack(method.delivery_tag, requeue=True)
        channel.cancel()
        assert counts == [(True, 1), (True, 2)]  # limit + 1 deliveries in all, one before the restart
        method, properties, body = channel.basic_get(dead, auto_ack=True)
        assert body == b"poison" and properties.headers["x-death"][0]["reason"] == "delivery_limit"
        channel.queue_delete(name)
        channel.queue_delete(dead)
