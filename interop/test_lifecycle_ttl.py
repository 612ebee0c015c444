"""Message TTL and queue expiry with pika and aio-pika, on real time (short TTLs)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aio_pika
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from interop.brokers import Broker
from interop.clients import pika_connection, queue_depth, unique, wait_until


def test_queue_ttl_expires_messages_nobody_consumes(channel: BlockingChannel) -> None:
    name = unique("ttl")
    channel.queue_declare(name, arguments={"x-message-ttl": 200})
    channel.confirm_delivery()
    channel.basic_publish("", name, b"soon gone")
    assert queue_depth(channel, name) == 1
    wait_until(lambda: queue_depth(channel, name) == 0, timeout=5, what="the message to expire")
    method, _, _ = channel.basic_get(name, auto_ack=True)
    assert method is None
    channel.queue_delete(name)


def test_per_message_expiration_and_the_lower_ttl_wins(channel: BlockingChannel) -> None:
    name = unique("expiration")
    channel.queue_declare(name, arguments={"x-message-ttl": 60_000})
    channel.confirm_delivery()
    channel.basic_publish("", name, b"short", pika.BasicProperties(expiration="150"))
    started = time.monotonic()
    wait_until(lambda: queue_depth(channel, name) == 0, timeout=5, what="the message to expire")
    assert time.monotonic() - started < 3
    channel.queue_delete(name)


def test_an_expired_message_is_never_consumed(channel: BlockingChannel) -> None:
    name = unique("never")
    channel.queue_declare(name, arguments={"x-message-ttl": 100})
    channel.confirm_delivery()
    channel.basic_publish("", name, b"stale")
    time.sleep(0.4)
    channel.basic_publish("", name, b"fresh")
    method, _, body = channel.basic_get(name, auto_ack=True)
    assert body == b"fresh"
    channel.queue_delete(name)


def test_invalid_expiration_closes_the_channel(connection: pika.BlockingConnection) -> None:
    channel = connection.channel()
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        channel.basic_publish("", unique("nowhere"), b"x", pika.BasicProperties(expiration="1.5"))
    assert (closed.value.reply_code, closed.value.reply_text) == (
        406,
        "PRECONDITION_FAILED - invalid expiration '1.5': {leftover_string,\".5\"}",
    )


async def unused_queue_expires(url: str) -> None:
    name = unique("expires")
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        # Two pauses of 0.6 of the expiry each: together longer than it, so the queue is still there only
        # because the declare between them counted as use. Wide enough that a loaded machine's scheduling
        # delays do not stretch one pause past the expiry.
        await channel.declare_queue(name, arguments={"x-expires": 1500})
        await asyncio.sleep(0.9)
        await channel.declare_queue(name, passive=True)  # a declare counts as use
        await asyncio.sleep(0.9)
        await channel.declare_queue(name, passive=True)
        deadline = time.monotonic() + 10
        while True:
            # Each probe is a use too, so probes are further apart than the expiry.
            await asyncio.sleep(2.0)
            probe = await connection.channel()
            try:
                await probe.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                return
            assert time.monotonic() < deadline, "the unused queue was not deleted"
            await probe.close()


def test_an_unused_queue_expires(broker: Broker) -> None:
    asyncio.run(asyncio.wait_for(unused_queue_expires(broker.url), 30))


def test_a_durable_ttl_queue_keeps_its_messages_across_a_restart(
    private_broker: Callable[[], Broker],
) -> None:
    broker = private_broker()
    name = unique("durable-ttl")
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(name, durable=True, arguments={"x-message-ttl": 120_000})
        channel.basic_publish("", name, b"kept", pika.BasicProperties(delivery_mode=2))
        channel.basic_publish("", name, b"brief", pika.BasicProperties(delivery_mode=2, expiration="100"))
    broker.restart()
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        method, _, body = channel.basic_get(name, auto_ack=True)
        assert body == b"kept"
        # "brief" expired, before the restart or once it came back at the head.
        wait_until(lambda: queue_depth(channel, name) == 0, timeout=10, what="the brief message to expire")
        channel.queue_delete(name)
