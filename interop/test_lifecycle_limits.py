"""Queue length limits with pika and aio-pika: overflow modes, and nacks for refused publishes."""

from __future__ import annotations

import asyncio

import aio_pika
import pika
import pytest
from pamqp.commands import Basic
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import NackError

from interop.brokers import Broker
from interop.clients import queue_depth, unique, wait_until


def drain(channel: BlockingChannel, name: str) -> list[bytes]:
    bodies = []
    while True:
        method, _, body = channel.basic_get(name, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def test_drop_head_dead_letters_the_oldest(channel: BlockingChannel) -> None:
    name, dead = unique("maxlen"), unique("maxlen-dead")
    channel.queue_declare(dead)
    channel.queue_declare(name, arguments={
        "x-max-length": 2, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead,
    })
    channel.confirm_delivery()
    for n in range(5):
        channel.basic_publish("", name, b"%d" % n)
    assert drain(channel, name) == [b"3", b"4"]
    wait_until(lambda: queue_depth(channel, dead) == 3, timeout=5, what="the dropped messages")
    method, properties, body = channel.basic_get(dead, auto_ack=True)
    assert body == b"0" and properties.headers["x-death"][0]["reason"] == "maxlen"
    for queue in (name, dead):
        channel.queue_delete(queue)


def test_max_length_bytes_counts_bodies(channel: BlockingChannel) -> None:
    name = unique("maxbytes")
    channel.queue_declare(name, arguments={"x-max-length-bytes": 10})
    channel.confirm_delivery()
    for body in (b"aaaa", b"bbbb", b"cccc"):
        channel.basic_publish("", name, body)
    assert drain(channel, name) == [b"bbbb", b"cccc"]
    channel.queue_delete(name)


def test_reject_publish_nacks_with_pika(channel: BlockingChannel) -> None:
    name = unique("reject-publish")
    channel.queue_declare(name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    channel.basic_publish("", name, b"fits")
    with pytest.raises(NackError):
        channel.basic_publish("", name, b"refused", pika.BasicProperties(message_id="refused"))
    assert drain(channel, name) == [b"fits"]
    channel.basic_publish("", name, b"room again")
    channel.queue_delete(name)


async def reject_publish_dlx(url: str) -> None:
    name, dead = unique("reject-dlx"), unique("reject-dlx-dead")
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        dead_queue = await channel.declare_queue(dead)
        await channel.declare_queue(name, arguments={
            "x-max-length": 1, "x-overflow": "reject-publish-dlx",
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead,
        })
        outcomes = []
        for n in range(3):
            try:
                message = aio_pika.Message(b"%d" % n)
                confirmation = await channel.default_exchange.publish(message, routing_key=name)
                outcomes.append(type(confirmation).__name__)
            except aio_pika.exceptions.DeliveryError as error:
                outcomes.append(type(error.frame).__name__)
        assert outcomes == [Basic.Ack.__name__, Basic.Nack.__name__, Basic.Nack.__name__]
        for expected in (b"1", b"2"):
            message = await dead_queue.get(timeout=5)
            assert message.body == expected
            assert message.headers["x-death"][0]["reason"] == "maxlen"
            await message.ack()
        await channel.queue_delete(name)
        await channel.queue_delete(dead)


def test_reject_publish_dlx_nacks_and_dead_letters_with_aio_pika(broker: Broker) -> None:
    asyncio.run(asyncio.wait_for(reject_publish_dlx(broker.url), 30))
