"""Large bodies cost memory in proportion to the body: assembled from their frames without a join, handed
to the socket a piece at a time, written to a log or a page file from the message's own buffer, and read
back with each body a buffer of its own. bench/large_message.py measures the whole broker against
RabbitMQ; these check each step in process."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

from pamqp import body as pamqp_body
from pamqp import frame, header
from pamqp.commands import Basic, Queue

from leveret.broker.node import Node
from leveret.broker.session.connection import ConnectionSession
from leveret.broker.store import Store, records
from leveret.broker.store.pages import PageFiles
from leveret.broker.store.reader import LARGE_READ, read_enqueues, read_page
from leveret.config import Config
from tests.peers import ClientPeer, methods

BODY = 20 * 1024 * 1024
READ_SIZE = 65536  # what the connection task reads at a time
CHUNK = 1024 * 1024  # what it takes from the session at a time
PROPS = b"\x10\x00\x02"  # delivery_mode 2


def connect(node: Node) -> tuple[ClientPeer, ConnectionSession]:
    session = ConnectionSession(node, "127.0.0.1:1", from_loopback=True)
    client = ClientPeer(session)
    client.handshake()
    client.open_channel(1)
    return client, session


def publish_frames(body: bytes, frame_max: int = 131072) -> bytes:
    data = frame.marshal(Basic.Publish(exchange="", routing_key="big"), 1)
    data += frame.marshal(header.ContentHeader(0, len(body), Basic.Properties()), 1)
    step = frame_max - 8
    parts = [data]
    for start in range(0, len(body), step):
        parts.append(frame.marshal(pamqp_body.ContentBody(body[start : start + step]), 1))
    return b"".join(parts)


def test_a_large_body_through_the_broker_is_held_about_once() -> None:
    node = Node(Config())
    publisher, publisher_session = connect(node)
    consumer, consumer_session = connect(node)
    methods(publisher.method(1, Queue.Declare(queue="big")))
    methods(consumer.method(1, Basic.Consume(queue="big", consumer_tag="c", no_ack=True)))
    body = os.urandom(BODY)
    wire = publish_frames(body)
    received = bytearray()

    tracemalloc.start()
    try:
        for start in range(0, len(wire), READ_SIZE):  # as the socket hands it over
            publisher_session.receive_data(wire[start : start + READ_SIZE])
        pieces = 0
        while chunk := consumer_session.data_to_send(CHUNK):
            assert len(chunk) < CHUNK + 131072
            pieces += 1
            received += chunk  # (the client's side: counted, but known, below)
            if pieces == 1:
                assert consumer_session.conn.output_size() > BODY - 2 * CHUNK
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pieces > 10, "the body was handed out whole"
    # The body once in the broker, plus what the test itself gathered from the socket side (at most the
    # body again, over-allocated by a bytearray's growth), plus a few pieces in flight.
    broker_peak = peak - len(received) * 1.125
    assert broker_peak < 1.2 * BODY, f"{broker_peak / BODY:.2f} bodies"
    assert delivered_body(bytes(received)) == body


def delivered_body(data: bytes) -> bytes:
    """The body of the one basic.deliver in `data`, from its body frames."""
    parts = []
    while data:
        consumed, _channel, value = frame.unmarshal(data)
        data = data[consumed:]
        if isinstance(value, pamqp_body.ContentBody):
            parts.append(value.value)
    return b"".join(parts)


def test_a_large_body_is_logged_from_the_message_itself_and_read_back(tmp_path: Path) -> None:
    store = Store(tmp_path)
    log = store.open_queue("/", "q")
    log.recover()
    small = b"small"
    body = bytearray(os.urandom(LARGE_READ + 12345))  # as the frames were assembled
    log.append_enqueue(1, "ex", "k1", PROPS, small)
    log.append_enqueue(2, "ex", "k2", PROPS, body, 1_700_000_000_000)
    at = log.last_location
    log.append_enqueue(3, "ex", "k3", PROPS, small)
    writes = log.take_writes()
    assert any(write.data is body for write in writes), "the body was copied into the write buffer"
    log.restore_writes(writes)
    batch = store.begin_sync()
    assert batch is not None
    batch.run()
    assert batch.error is None
    store.complete(batch)

    found = read_enqueues(log.directory, [at])
    assert found == [(2, "ex", "k2", PROPS, bytes(body))]
    reopened = Store(tmp_path).open_queue("/", "q")
    assert [(m.seq, m.body) for m in reopened.recover()] == [(1, small), (2, bytes(body)), (3, small)]


def test_a_damaged_large_record_reads_as_none(tmp_path: Path) -> None:
    store = Store(tmp_path)
    log = store.open_queue("/", "q")
    log.recover()
    log.append_enqueue(1, "ex", "k", PROPS, os.urandom(LARGE_READ + 1))
    at = log.last_location
    batch = store.begin_sync()
    assert batch is not None
    batch.run()
    store.complete(batch)
    path = next(log.directory.glob("*.seg"))
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the body: only the CRC over every piece catches it
    path.write_bytes(bytes(data))
    assert read_enqueues(log.directory, [at]) == [None]


def test_large_paged_bodies_are_written_from_their_buffers_and_read_back(tmp_path: Path) -> None:
    pages = PageFiles(tmp_path / "pages")
    large = os.urandom(LARGE_READ)
    messages = [(1, b"\x00\x02rk", b"p", b"a" * 100), (2, b"\x00\x02rk", PROPS, large), (3, b"", b"", b"z")]
    run = pages.append(records.page_parts(messages))
    io = pages.take_io()
    assert io is not None
    assert any(data is large for _file, runs in io.writes for _offset, data in runs)
    io.run()
    assert io.failed == set()
    assert run.length > LARGE_READ  # read a message at a time
    assert read_page(run.path, run.offset, run.length) == messages

    data = bytearray(run.path.read_bytes())
    data[run.offset + run.length - 3] ^= 0xFF
    run.path.write_bytes(bytes(data))
    assert read_page(run.path, run.offset, run.length) is None
