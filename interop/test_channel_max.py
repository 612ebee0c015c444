"""channel_max bounds how many channels a connection has open, not the numbers they use, as in RabbitMQ
(rabbit_reader:create_channel, the same in 3.10 and 3.13): channel 65535 opens under the default
channel_max of 2047, and one channel more than the negotiated channel_max closes the connection with 530
NOT_ALLOWED "number of channels opened (N) has reached the negotiated channel_max (N)". A raw client: the
usual client libraries never pick such numbers themselves."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pamqp import frame
from pamqp.commands import Channel, Connection, Queue
from pamqp.heartbeat import Heartbeat

from interop.brokers import Broker


class Client:
    def __init__(self, broker: Broker, channel_max: int | None = None) -> None:
        """`channel_max`: what tune-ok asks for; None: what the broker offers."""
        self.sock = socket.create_connection((broker.host, broker.port), timeout=10)
        self.buffer = bytearray()
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        assert isinstance(self.receive(), Connection.Start)
        login = "\0guest\0guest"
        start_ok = Connection.StartOk(client_properties={}, mechanism="PLAIN", response=login, locale="en_US")
        self.send(0, start_ok)
        tune = self.receive()
        self.offered = tune.channel_max
        asked = channel_max if channel_max is not None else tune.channel_max
        self.send(0, Connection.TuneOk(channel_max=asked, frame_max=tune.frame_max, heartbeat=0))
        self.send(0, Connection.Open(virtual_host="/"))
        assert isinstance(self.receive(), Connection.OpenOk)

    def send(self, channel: int, method: Any) -> None:
        self.sock.sendall(frame.marshal(method, channel))

    def receive(self) -> Any:
        while True:
            try:
                consumed, _channel, value = frame.unmarshal(bytes(self.buffer))
            except Exception:  # not a whole frame yet
                data = self.sock.recv(65536)
                if not data:
                    return None
                self.buffer += data
                continue
            del self.buffer[:consumed]
            if not isinstance(value, Heartbeat):
                return value

    def open(self, number: int) -> Any:
        self.send(number, Channel.Open())
        return self.receive()


@pytest.fixture
def clients(broker: Broker) -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.sock.close()


def test_any_channel_number_opens_under_the_default_channel_max(
    broker: Broker, clients: list[Client]
) -> None:
    client = Client(broker)
    clients.append(client)
    assert client.offered == 2047
    for number in (65535, 2048, 2047):
        assert isinstance(client.open(number), Channel.OpenOk)
    client.send(65535, Queue.Declare(queue="", exclusive=True))
    assert isinstance(client.receive(), Queue.DeclareOk)


def test_one_channel_more_than_channel_max_closes_the_connection(
    broker: Broker, clients: list[Client]
) -> None:
    client = Client(broker, channel_max=3)
    clients.append(client)
    for number in (1, 500, 65535):
        assert isinstance(client.open(number), Channel.OpenOk)
    close = client.open(7)
    assert isinstance(close, Connection.Close)
    assert (close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        530,
        "NOT_ALLOWED - number of channels opened (3) has reached the negotiated channel_max (3)",
        0,
        0,
    )


def test_a_closed_channel_makes_room_for_another(broker: Broker, clients: list[Client]) -> None:
    client = Client(broker, channel_max=3)
    clients.append(client)
    for number in (1, 2, 3):
        assert isinstance(client.open(number), Channel.OpenOk)
    client.send(2, Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
    assert isinstance(client.receive(), Channel.CloseOk)
    assert isinstance(client.open(9), Channel.OpenOk)
    assert isinstance(client.open(10), Connection.Close)
