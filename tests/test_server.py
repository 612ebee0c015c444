"""The trio server over real loopback sockets: closing handshakes, heartbeats, isolation of failures."""

from __future__ import annotations

import trio
from pamqp import frame
from pamqp.body import ContentBody
from pamqp.commands import Basic, Channel, Connection, Queue
from pamqp.header import ContentHeader

from leveret.broker.node import Node
from leveret.broker.server.listener import serve_amqp
from leveret.config import Config
from tests.trio_client import TrioClient


async def start_server(nursery: trio.Nursery, config: Config | None = None) -> int:
    listeners = await nursery.start(serve_amqp, Node(config or Config()), "127.0.0.1", 0)
    return listeners[0].socket.getsockname()[1]


async def test_close_ok_always_arrives_before_the_socket_closes() -> None:
    """Regression: a close-ok queued while the writer was busy sending used to be dropped."""
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery)
        for _ in range(30):
            client = TrioClient(await trio.open_tcp_stream("127.0.0.1", port))
            await client.handshake()
            await client.send(1, Channel.Open())
            assert isinstance(await client.receive(), Channel.OpenOk)
            await client.send(1, Queue.Declare(queue="q"))
            assert isinstance(await client.receive(), Queue.DeclareOk)
            await client.send(1, Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
            assert isinstance(await client.receive(), Channel.CloseOk)
            await client.send(0, Connection.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
            assert isinstance(await client.receive(), Connection.CloseOk)
            assert await client.receive() is None
            await client.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_silent_peer_is_disconnected_after_two_heartbeats() -> None:
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery)
        client = TrioClient(await trio.open_tcp_stream("127.0.0.1", port))
        await client.handshake(heartbeat=1)
        started = trio.current_time()
        frames = []
        with trio.fail_after(6):
            while (value := await client.receive()) is not None:
                frames.append(value)
        elapsed = trio.current_time() - started
        assert 2 <= elapsed < 4, elapsed
        assert any(type(f).__name__ == "Heartbeat" for f in frames)  # the server sent its own
        nursery.cancel_scope.cancel()


async def test_handshake_timeout_closes_a_silent_socket() -> None:
    config = Config()
    from dataclasses import replace

    config = replace(config, limits=replace(config.limits, handshake_timeout=0.5))
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, config)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(3):
            assert await stream.receive_some(100) == b""
        nursery.cancel_scope.cancel()


async def test_garbage_on_one_connection_leaves_others_working() -> None:
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery)
        good = TrioClient(await trio.open_tcp_stream("127.0.0.1", port))
        await good.handshake()
        bad = TrioClient(await trio.open_tcp_stream("127.0.0.1", port))
        await bad.handshake()
        await bad.stream.send_all(b"\x01\x00\x01\xff\xff\xff\xff" + b"junk" * 100)
        close = await bad.receive()
        assert isinstance(close, Connection.Close) and close.reply_code == 501
        await good.send(1, Channel.Open())
        assert isinstance(await good.receive(), Channel.OpenOk)
        nursery.cancel_scope.cancel()


async def test_a_consumer_that_stops_reading_still_gets_every_message_in_order() -> None:
    """Deliveries are written straight from the publisher's reader until the consumer's socket is full;
    the rest goes through its writer task. Nothing may be lost, duplicated or reordered on the way."""
    count, size = 2000, 8192
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery)
        consumer = TrioClient(await trio.open_tcp_stream("127.0.0.1", port))
        await consumer.handshake()
        await consumer.send(1, Channel.Open())
        assert isinstance(await consumer.receive(), Channel.OpenOk)
        await consumer.send(1, Queue.Declare(queue="q"))
        assert isinstance(await consumer.receive(), Queue.DeclareOk)
        await consumer.send(1, Basic.Consume(queue="q", consumer_tag="c", no_ack=True))
        assert isinstance(await consumer.receive(), Basic.ConsumeOk)

        publisher = TrioClient(await trio.open_tcp_stream("127.0.0.1", port))
        await publisher.handshake()
        await publisher.send(1, Channel.Open())
        assert isinstance(await publisher.receive(), Channel.OpenOk)
        publishes = b"".join(
            frame.marshal(Basic.Publish(exchange="", routing_key="q"), 1)
            + frame.marshal(ContentHeader(0, size, Basic.Properties()), 1)
            + frame.marshal(ContentBody(index.to_bytes(4, "big") * (size // 4)), 1)
            for index in range(count)
        )
        # 16 MiB, far more than the consumer's socket buffers hold while it is not reading.
        await publisher.stream.send_all(publishes)
        await trio.sleep(0.5)

        received: list[int] = []
        with trio.fail_after(30):
            while len(received) < count:
                value = await consumer.receive()
                if isinstance(value, ContentBody):
                    assert len(value.value) == size
                    received.append(int.from_bytes(value.value[:4], "big"))
        assert received == list(range(count))
        nursery.cancel_scope.cancel()
