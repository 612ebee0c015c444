"""Priorities, single active consumer and delivery limits with pika and aio-pika."""

from __future__ import annotations

import asyncio

import aio_pika
import pika
from pika.adapters.blocking_connection import BlockingChannel

from interop.brokers import Broker
from interop.clients import pika_connection, pump_until, unique


def test_priority_queue_delivers_higher_first(channel: BlockingChannel) -> None:
    name = unique("priority")
    channel.queue_declare(name, arguments={"x-max-priority": 5})
    channel.confirm_delivery()
    for body, priority in ((b"low", 1), (b"none", None), (b"capped", 200), (b"high", 5), (b"mid", 3)):
        channel.basic_publish("", name, body, pika.BasicProperties(priority=priority))
    received = []
    for method, _, body in channel.consume(name, auto_ack=True, inactivity_timeout=5):
        assert method is not None
        received.append(body)
        if len(received) == 5:
            break
    channel.cancel()
    assert received == [b"capped", b"high", b"mid", b"low", b"none"]
    channel.queue_delete(name)


def test_consumer_priorities(broker: Broker, channel: BlockingChannel) -> None:
    name = unique("consumer-priority")
    channel.queue_declare(name)
    with pika_connection(broker.url) as connection:
        consumer_channel = connection.channel()
        consumer_channel.basic_qos(prefetch_count=2)
        got: dict[str, list[bytes]] = {"high": [], "low": []}
        for tag, priority in (("low", 1), ("high", 10)):
            consumer_channel.basic_consume(
                name, lambda _ch, _m, _p, body, tag=tag: got[tag].append(body),
                consumer_tag=tag, arguments={"x-priority": priority},
            )
        channel.confirm_delivery()
        for n in range(3):
            channel.basic_publish("", name, b"%d" % n)
        pump_until(connection, lambda: len(got["high"]) + len(got["low"]) == 3, what="three deliveries")
        # The higher one takes messages up to its prefetch; the lower one gets the rest.
        assert got == {"high": [b"0", b"1"], "low": [b"2"]}
    channel.queue_delete(name)


async def single_active_consumer_failover(url: str) -> None:
    name = unique("sac")
    async with await aio_pika.connect(url) as setup:
        channel = await setup.channel(publisher_confirms=True)
        await channel.declare_queue(name, arguments={"x-single-active-consumer": True})
        first_connection = await aio_pika.connect(url)
        second_connection = await aio_pika.connect(url)
        received: dict[str, asyncio.Queue[aio_pika.abc.AbstractIncomingMessage]] = {
            "first": asyncio.Queue(), "second": asyncio.Queue()
        }
        for label, connection in (("first", first_connection), ("second", second_connection)):
            consumer_channel = await connection.channel()
            await consumer_channel.set_qos(prefetch_count=1)
            queue = await consumer_channel.get_queue(name, ensure=False)
            await queue.consume(received[label].put)
        for n in range(3):
            await channel.default_exchange.publish(aio_pika.Message(b"%d" % n), routing_key=name)
        held = await asyncio.wait_for(received["first"].get(), 10)
        assert held.body == b"0"
        await asyncio.sleep(0.3)
        assert received["second"].empty()  # only the active consumer gets messages
        # The active consumer's connection dies holding a delivery: the next consumer takes over.
        await first_connection.close()
        bodies = []
        for _ in range(3):
            message = await asyncio.wait_for(received["second"].get(), 10)
            bodies.append((message.body, message.redelivered))
            await message.ack()
        assert bodies == [(b"0", True), (b"1", False), (b"2", False)]
        await second_connection.close()
        await channel.queue_delete(name)


def test_single_active_consumer_failover(broker: Broker) -> None:
    asyncio.run(asyncio.wait_for(single_active_consumer_failover(broker.url), 60))


def test_delivery_limit_dead_letters_a_poison_message(channel: BlockingChannel) -> None:
    name, dead = unique("poison"), unique("poison-dead")
    channel.queue_declare(dead)
    channel.queue_declare(name, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 2,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead,
    })
    channel.confirm_delivery()
    channel.basic_publish("", name, b"poison", pika.BasicProperties(headers={"app": "kept"}))
    counts = []
    for method, properties, _ in channel.consume(name, inactivity_timeout=1.5):
        if method is None:
            break
        counts.append((method.redelivered, properties.headers.get("x-delivery-count")))
        channel.basic_nack(method.delivery_tag, requeue=True)
    channel.cancel()
    # Delivered limit + 1 times; the count shows from the first redelivery.
    assert counts == [(False, None), (True, 1), (True, 2)]
    method, properties, body = channel.basic_get(dead, auto_ack=True)
    assert body == b"poison"
    assert properties.headers["x-death"][0]["reason"] == "delivery_limit"
    assert properties.headers["app"] == "kept" and "x-delivery-count" not in properties.headers
    channel.queue_delete(name)
    channel.queue_delete(dead)
