"""Many raw connections with many channels each, opened and closed in bulk (pipelined), for the memory
figures of mass closes (bench/resource_holes.py closes, interop/test_memory_after_closes.py)."""

from __future__ import annotations

from pamqp import frame
from pamqp.commands import Basic, Channel, Connection

from interop.brokers import Broker
from interop.rawclient import RawClient

BODY_SIZE = 1000


class ChannelFleet:
    """`connections` raw clients (each with its channel 1); `open_channels` adds `channels` more to each.
    With `in_flight`, each of those consumes its connection's queue (auto-delete) holding that many
    messages delivered and unacked."""

    def __init__(self, broker: Broker, connections: int, channels: int, in_flight: int) -> None:
        self.numbers = range(2, channels + 2)
        self.in_flight = in_flight
        self.clients = [RawClient(broker.host, broker.port) for _ in range(connections)]

    def open_channels(self) -> None:
        numbers, in_flight = self.numbers, self.in_flight
        for index, client in enumerate(self.clients):
            client.sock.sendall(b"".join(frame.marshal(Channel.Open(), n) for n in numbers))
            for _ in numbers:
                client.expect(Channel.OpenOk)
            if not in_flight:
                continue
            queue = f"fleet-{index}"
            client.declare(queue, auto_delete=True)
            client.sock.sendall(b"".join(
                frame.marshal(Basic.Qos(prefetch_count=in_flight), n)
                + frame.marshal(Basic.Consume(queue=queue), n)
                for n in numbers
            ))
            for _ in range(2 * len(numbers)):  # qos-ok and consume-ok
                client.receive()
            client.publish(queue, range(in_flight * len(numbers)), BODY_SIZE)
        for client in self.clients:  # each delivery is three frames: method, header, body
            for _ in range(3 * in_flight * len(numbers)):
                client.receive()

    def close_channels(self) -> None:
        close = Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0)
        for client in self.clients:
            client.sock.sendall(b"".join(frame.marshal(close, n) for n in self.numbers))
        for client in self.clients:
            for _ in self.numbers:
                client.expect(Channel.CloseOk)

    def close_connections(self) -> None:
        close = Connection.Close(reply_code=200, reply_text="", class_id=0, method_id=0)
        for client in self.clients:
            client.send(0, close)
        for client in self.clients:
            client.expect(Connection.CloseOk)
            client.close()
