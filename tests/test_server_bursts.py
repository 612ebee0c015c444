"""A client's burst, several publishes in one segment: the first one's delivery is written before the
broker handles the others, so it does not wait for their routing and deliveries; the rest go out together."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest
import trio
from pamqp import body as pamqp_body
from pamqp import frame, header
from pamqp.commands import Basic, Queue

from tests.test_server import start_server
from tests.test_server_reads import _open_channel

_DELIVER = struct.pack(">HH", 60, 60)  # basic.deliver's class and method ids, at the start of its payload


@pytest.fixture
def deliveries_per_write(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many basic.deliver frames each of the broker's direct writes carried (writes with none left out)."""
    counts: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        found = bytes(data).count(_DELIVER)
        if found:
            counts.append(found)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    yield counts


def _publish(body: bytes, queue: str) -> bytes:
    return (
        frame.marshal(Basic.Publish(exchange="", routing_key=queue), 1)
        + frame.marshal(header.ContentHeader(0, len(body), Basic.Properties()), 1)
        + frame.marshal(pamqp_body.ContentBody(body), 1)
    )


async def test_the_first_publish_of_a_burst_is_delivered_before_the_rest_are_handled(
    deliveries_per_write: list[int],
) -> None:
    async with trio.open_nursery() as nursery:
        port = await start_server(nursery)
        consumer = await _open_channel(port)
        await consumer.send(1, Queue.Declare(queue="burst"))
        assert isinstance(await consumer.receive(), Queue.DeclareOk)
        await consumer.send(1, Basic.Consume(queue="burst", consumer_tag="c", no_ack=True))
        assert isinstance(await consumer.receive(), Basic.ConsumeOk)
        publisher = await _open_channel(port)
        await trio.sleep(0.05)
        await publisher.stream.send_all(b"".join(_publish(b"%d" % n, "burst") for n in range(3)))
        bodies = []
        while len(bodies) < 3:
            received = await consumer.receive()
            if isinstance(received, pamqp_body.ContentBody):
                bodies.append(received.value)
        assert bodies == [b"0", b"1", b"2"]
        assert deliveries_per_write == [1, 2]
        nursery.cancel_scope.cancel()
