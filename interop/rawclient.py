"""A bare AMQP 0-9-1 client on a blocking socket, fast enough to load a broker with millions of messages
from Python: publishes are pre-framed bytes sent in large writes, deliveries are cut out of the stream with
`struct` (pamqp only for the handshake and the few synchronous methods).

Bodies are numbered: each starts with its number in 8 ASCII digits, so a drain can check order.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

from pamqp import frame, header
from pamqp.commands import Basic, Channel, Connection, Queue
from pamqp.heartbeat import Heartbeat

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_MAX = 131072
_FRAME_HEAD = struct.Struct(">BHI")
_METHOD_IDS = struct.Struct(">HH")
_DELIVER = (60, 60)
_FRAME_END = b"\xce"
SEND_SIZE = 256 * 1024  # publishes are written this many bytes at a time


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(kind, channel, len(payload)) + payload + _FRAME_END


def numbered_body(number: int, size: int) -> bytes:
    return (b"%08d" % number).ljust(size, b".")


class RawClient:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.sock.sendall(PROTOCOL_HEADER)
        self.expect(Connection.Start)
        self.send(
            0,
            Connection.StartOk(
                client_properties={}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US"
            ),
        )
        tune = self.expect(Connection.Tune)
        # The server's channel_max: RabbitMQ refuses 0 ("no limit") when it has a limit.
        self.send(0, Connection.TuneOk(channel_max=tune.channel_max, frame_max=FRAME_MAX, heartbeat=0))
        self.send(0, Connection.Open(virtual_host="/"))
        self.expect(Connection.OpenOk)
        self.send(1, Channel.Open())
        self.expect(Channel.OpenOk)

    def close(self) -> None:
        self.sock.close()

    def send(self, channel: int, method: Any) -> None:
        self.sock.sendall(frame.marshal(method, channel))

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the broker closed the connection")
        self.buffer += data

    def receive(self) -> Any:
        """The next frame's pamqp value, heartbeats skipped."""
        while True:
            while len(self.buffer) < 7 or len(self.buffer) < _FRAME_HEAD.unpack_from(self.buffer)[2] + 8:
                self._fill()
            consumed, _, value = frame.unmarshal(bytes(self.buffer))
            del self.buffer[:consumed]
            if not isinstance(value, Heartbeat):
                return value

    def expect(self, kind: type) -> Any:
        value = self.receive()
        if not isinstance(value, kind):
            raise AssertionError(f"expected {kind.__name__}, got {value!r}")
        return value

    def declare(self, queue: str, **options: Any) -> int:
        """Declare (or with passive=True, look up) a queue; returns its message count."""
        self.send(1, Queue.Declare(queue=queue, **options))
        return self.expect(Queue.DeclareOk).message_count

    def publish(
        self,
        queue: str,
        numbers: range,
        size: int,
        *,
        persistent: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish numbered bodies of `size` bytes to `queue` through the default exchange, no confirms."""
        method = frame.marshal(Basic.Publish(exchange="", routing_key=queue), 1)
        properties = Basic.Properties(delivery_mode=2 if persistent else 1, headers=headers)
        content_header = frame.marshal(header.ContentHeader(0, size, properties), 1)
        head = method + content_header + _FRAME_HEAD.pack(3, 1, size)
        pending = []
        pending_size = 0
        for number in numbers:
            pending.append(head + numbered_body(number, size) + _FRAME_END)
            pending_size += len(head) + size + 1
            if pending_size >= SEND_SIZE:
                self.sock.sendall(b"".join(pending))
                pending, pending_size = [], 0
        if pending:
            self.sock.sendall(b"".join(pending))

    def consume(
        self, queue: str, *, prefetch: int = 1000, ack_every: int = 100
    ) -> Iterator[tuple[int, bool]]:
        """(number, redelivered) of each delivery, acking every `ack_every` with `multiple`."""
        self.send(1, Basic.Qos(prefetch_count=prefetch))
        self.send(1, Basic.Consume(queue=queue, consumer_tag="raw"))
        self.expect(Basic.QosOk)
        self.expect(Basic.ConsumeOk)
        tag = redelivered = 0
        unacked = 0
        buffer = self.buffer
        while True:
            pos = 0
            size = len(buffer)
            while pos + 7 <= size:
                kind, _, length = _FRAME_HEAD.unpack_from(buffer, pos)
                end = pos + 7 + length + 1
                if end > size:
                    break
                payload = pos + 7
                if kind == 1 and _METHOD_IDS.unpack_from(buffer, payload) == _DELIVER:
                    at = payload + 4
                    at += 1 + buffer[at]  # consumer tag
                    tag, redelivered = struct.unpack_from(">QB", buffer, at)
                elif kind == 3:
                    yield int(buffer[payload : payload + 8]), bool(redelivered)
                    unacked += 1
                    if unacked == ack_every:
                        self.sock.sendall(_frame(1, 1, struct.pack(">HHQB", 60, 80, tag, 1)))
                        unacked = 0
                pos = end
            del buffer[:pos]
            self._fill()
