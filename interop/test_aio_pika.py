"""aio-pika: robust connections, confirms, async iteration, the RPC pattern and closed connections.

The repo runs pytest in trio mode, so each test drives its own asyncio loop with asyncio.run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import aio_pika
import pytest
from aio_pika.patterns import RPC
from pamqp.commands import Basic

from interop.brokers import Broker
from interop.clients import unique

TIMEOUT = 30.0


async def publish_confirm_consume(url: str) -> None:
    name = unique("aio")
    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(name, durable=True)
        bodies = [f"message {i}".encode() for i in range(10)]
        for i, body in enumerate(bodies):
            message = aio_pika.Message(
                body, message_id=str(i), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            )
            confirmation = await channel.default_exchange.publish(message, routing_key=name)
            assert isinstance(confirmation, Basic.Ack)

        received: list[bytes] = []
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():  # acks when the block exits cleanly
                    received.append(message.body)
                    assert message.message_id == str(len(received) - 1)
                    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
                if len(received) == len(bodies):
                    break
        assert received == bodies
        assert (await channel.declare_queue(name, passive=True)).declaration_result.message_count == 0
        assert await queue.delete() is not None


async def rpc_round_trip(url: str) -> None:
    async with await aio_pika.connect_robust(url) as connection:
        server = await RPC.create(await connection.channel())
        client = await RPC.create(await connection.channel())
        method = unique("multiply")

        async def multiply(*, x: int, y: int) -> int:
            return x * y

        await server.register(method, multiply, auto_delete=True)
        assert await client.call(method, kwargs={"x": 6, "y": 7}) == 42
        assert await asyncio.gather(*(client.call(method, kwargs={"x": i, "y": i}) for i in range(5))) == [
            0,
            1,
            4,
            9,
            16,
        ]
        await client.close()
        await server.close()


async def closed_connection_is_dead(url: str) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    # A channel error leaves the connection alive.
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await channel.declare_queue(unique("missing"), passive=True)
    other = await connection.channel()
    await other.declare_queue(unique("alive"), exclusive=True)

    await connection.close()
    assert connection.is_closed
    assert other.is_closed
    with pytest.raises(aio_pika.exceptions.ChannelInvalidStateError):
        await other.declare_queue(unique("dead"), exclusive=True)


async def robust_connection_survives_restart(broker: Broker) -> None:
    name = unique("robust")
    connection = await aio_pika.connect_robust(broker.url, reconnect_interval=0.5)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, auto_delete=True)
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await received.put(message.body)
            await message.ack()

        await queue.consume(on_message)
        await channel.default_exchange.publish(aio_pika.Message(b"before"), routing_key=name)
        assert await asyncio.wait_for(received.get(), TIMEOUT) == b"before"

        reconnected = asyncio.Event()
        connection.reconnect_callbacks.add(lambda *_: reconnected.set())
        await asyncio.to_thread(broker.restart)
        await asyncio.wait_for(reconnected.wait(), TIMEOUT)
        # The robust channel has redeclared the (transient) queue and its consumer on the new broker.
        await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=name)
        assert await asyncio.wait_for(received.get(), TIMEOUT) == b"after"


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, TIMEOUT * 2))


def test_robust_publish_with_confirms_and_consume(broker: Broker) -> None:
    run(publish_confirm_consume(broker.url))


def test_rpc_round_trip(broker: Broker) -> None:
    run(rpc_round_trip(broker.url))


def test_closed_connection_is_dead(broker: Broker) -> None:
    run(closed_connection_is_dead(broker.url))


def test_robust_connection_recovers_after_broker_restart(private_broker: Callable[[], Broker]) -> None:
    own = private_broker()
    run(robust_connection_survives_restart(own))
