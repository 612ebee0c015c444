"""How the server reads a client socket: one read per arrival at a steady rate, and a reset peer."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pytest
import trio
from pamqp.commands import Basic, Channel, Queue

from tests.test_server import start_server
from tests.trio_client import TrioClient


class _Reads:
    """Every os.read the broker makes: those that returned bytes, and those that found nothing (EAGAIN)."""

    def __init__(self) -> None:
        self.with_data = 0
        self.would_block = 0


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Reads]:
    seen = _Reads()
    real_read = os.read

    def counting_read(fd: int, size: int) -> bytes:
        try:
            data = real_read(fd, size)
        except BlockingIOError:
            seen.would_block += 1
            raise
        seen.with_data += bool(data)
        return data

    monkeypatch.setattr(os, "read", counting_read)
    yield seen


async def _open_channel(port: int) -> TrioClient:
    client = TrioClient(await trio.open_tcp_stream("127.0.0.1", port))
    await client.handshake()
    await client.send(1, Channel.Open())
    assert isinstance(await client.receive(), Channel.OpenOk)
    return client


async def test_a_paced_publisher_costs_one_read_per_publish(reads: _Reads) -> None:
    """At a steady rate each publish finds the broker waiting: it reads the socket once it is readable,
    rather than first trying a read that finds nothing (a syscall and an exception per message)."""
    count = 40
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery)
        consumer = await _open_channel(port)
        await consumer.send(1, Queue.Declare(queue="paced"))
        assert isinstance(await consumer.receive(), Queue.DeclareOk)
        await consumer.send(1, Basic.Consume(queue="paced", consumer_tag="c", no_ack=True))
        assert isinstance(await consumer.receive(), Basic.ConsumeOk)
        publisher = await _open_channel(port)
        await trio.sleep(0.05)
        before = (reads.with_data, reads.would_block)
        for number in range(count):
            await publisher.publish(b"%d" % number, "paced")
            while not isinstance(await consumer.receive(), Basic.Deliver):
                pass
            await trio.sleep(0.005)
        data_reads, empty_reads = reads.with_data - before[0], reads.would_block - before[1]
        # The consumer's own reads of its deliveries are trio's (recv), not the broker's os.read.
        assert count <= data_reads <= count + 2, data_reads
        assert empty_reads <= 2, empty_reads
        nursery.cancel_scope.cancel()


async def test_a_peer_that_resets_its_connection_leaves_others_working() -> None:
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery)
        good = await _open_channel(port)
        reset = await _open_channel(port)
        await reset.publish(b"before the reset", "nowhere")
        # SO_LINGER 0: close sends a RST, so the broker's next read fails with ECONNRESET.
        reset.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await reset.stream.aclose()
        await trio.sleep(0.1)
        await good.send(1, Queue.Declare(queue="after-reset"))
        assert isinstance(await good.receive(), Queue.DeclareOk)
        nursery.cancel_scope.cancel()
