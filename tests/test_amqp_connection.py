"""The sans-IO server connection, driven by a pamqp client peer: no event loop, no sockets."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pamqp import frame
from pamqp.commands import Basic, Channel, Connection

from leveret.amqp.connection import ServerConnection, State
from leveret.amqp.constants import PROTOCOL_HEADER
from leveret.amqp.errors import ConnectionLevelError
from leveret.amqp.events import (
    ChannelFailed,
    ConnectionClosed,
    ConnectionOpened,
    ContentReceived,
    MethodReceived,
)
from leveret.amqp.handshake import ServerSettings, parse_sasl_response
from tests.peers import ClientPeer, methods


class Policy:
    def mechanisms(self) -> tuple[str, ...]:
        return ("PLAIN", "AMQPLAIN")

    def external_username(self) -> str | None:
        return None

    def authenticate(self, mechanism: str, username: str, password: str) -> bool:
        return (username, password) == ("guest", "guest")

    def check_vhost(self, username: str, vhost: str) -> None:
        if vhost != "/":
            raise ConnectionLevelError(530, f"vhost {vhost} not found", 10, 40)


class Driver:
    """Feeds bytes to a ServerConnection and records its events, answering channel.open like a broker."""

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self.conn = ServerConnection(settings or ServerSettings(), Policy())
        self.events: list[Any] = []

    def receive_data(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while (event := self.conn.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, MethodReceived) and isinstance(event.method, Channel.Open):
                self.conn.send_method(event.channel, Channel.OpenOk())

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()


@pytest.fixture
def pair() -> tuple[Driver, ClientPeer]:
    driver = Driver()
    return driver, ClientPeer(driver)


def test_handshake_reaches_open(pair: tuple[Driver, ClientPeer]) -> None:
    driver, client = pair
    client.handshake()
    assert driver.conn.state is State.OPEN
    opened = [e for e in driver.events if isinstance(e, ConnectionOpened)]
    assert opened and opened[0].username == "guest" and opened[0].vhost == "/"


def test_start_advertises_rabbitmq_capabilities(pair: tuple[Driver, ClientPeer]) -> None:
    _, client = pair
    start = methods(client.send(PROTOCOL_HEADER))[0]
    assert isinstance(start, Connection.Start)
    capabilities = start.server_properties["capabilities"]
    for name in (
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "exchange_exchange_bindings",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ):
        assert capabilities[name] is True
    assert set(start.mechanisms.split()) == {"PLAIN", "AMQPLAIN"}


def test_wrong_protocol_header_gets_ours_and_close(pair: tuple[Driver, ClientPeer]) -> None:
    driver, client = pair
    frames = client.send(b"AMQP\x00\x00\x08\x00")
    assert frames == [(0, PROTOCOL_HEADER)]
    assert driver.conn.closed


def test_bad_password_is_refused_with_403(pair: tuple[Driver, ClientPeer]) -> None:
    driver, client = pair
    client.send(PROTOCOL_HEADER)
    reply = methods(
        client.method(
            0,
            Connection.StartOk(
                client_properties={"capabilities": {"authentication_failure_close": True}},
                mechanism="PLAIN",
                response="\0guest\0wrong",
                locale="en_US",
            ),
        )
    )
    assert isinstance(reply[0], Connection.Close)
    assert reply[0].reply_code == 403
    assert reply[0].reply_text.startswith("ACCESS_REFUSED - Login was refused")


def test_bad_password_without_the_capability_is_a_silent_close(pair: tuple[Driver, ClientPeer]) -> None:
    driver, client = pair
    client.send(PROTOCOL_HEADER)
    start_ok = Connection.StartOk(client_properties={}, mechanism="PLAIN", response="\0guest\0wrong")
    assert client.method(0, start_ok) == []
    assert driver.conn.closed


def test_errors_before_start_ok_close_silently(pair: tuple[Driver, ClientPeer]) -> None:
    driver, client = pair
    client.send(PROTOCOL_HEADER)
    assert client.method(0, Connection.TuneOk(channel_max=0, frame_max=131072, heartbeat=0)) == []
    assert driver.conn.closed


def test_unknown_vhost_is_530(pair: tuple[Driver, ClientPeer]) -> None:
    driver, client = pair
    client.send(PROTOCOL_HEADER)
    client.method(
        0,
        Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US"
        ),
    )
    client.method(0, Connection.TuneOk(channel_max=10, frame_max=131072, heartbeat=0))
    reply = methods(client.method(0, Connection.Open(virtual_host="/nope")))
    assert reply[0].reply_code == 530


def test_amqplain_response_parses() -> None:
    from pamqp import encode

    table = encode.field_table({"LOGIN": "guest", "PASSWORD": "secret"})[4:]
    assert parse_sasl_response("AMQPLAIN", table) == ("guest", "secret")
    assert parse_sasl_response("PLAIN", b"\0u\0p") == ("u", "p")


def test_tune_ok_frame_max_above_offer_is_refused(pair: tuple[Driver, ClientPeer]) -> None:
    _, client = pair
    client.send(PROTOCOL_HEADER)
    client.method(
        0,
        Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US"
        ),
    )
    reply = methods(client.method(0, Connection.TuneOk(channel_max=10, frame_max=10**7, heartbeat=0)))
    assert reply[0].reply_code == 530


def test_publish_content_is_assembled_across_body_frames(pair: tuple[Driver, ClientPeer]) -> None:
    driver, client = pair
    client.handshake()
    client.open_channel(1)
    body = bytes(range(256)) * 100
    client.publish(1, body, routing_key="q", properties=Basic.Properties(delivery_mode=2), frame_max=4096)
    content = [e for e in driver.events if isinstance(e, ContentReceived)]
    assert len(content) == 1
    assert content[0].body == body and content[0].publish.routing_key == "q"


def test_method_where_content_header_is_due_is_505(pair: tuple[Driver, ClientPeer]) -> None:
    driver, client = pair
    client.handshake()
    client.open_channel(1)
    client.method(1, Basic.Publish(exchange="", routing_key="q"))
    reply = methods(client.method(1, Basic.Qos(prefetch_count=1)))
    assert isinstance(reply[0], Connection.Close) and reply[0].reply_code == 505
    assert any(isinstance(e, ConnectionClosed) for e in driver.events)


def test_body_without_publish_is_505(pair: tuple[Driver, ClientPeer]) -> None:
    _, client = pair
    client.handshake()
    client.open_channel(1)
    reply = methods(client.send(struct.pack(">BHI", 3, 1, 3) + b"abc\xce"))
    assert reply[0].reply_code == 505


def test_frame_on_unopened_channel_is_504(pair: tuple[Driver, ClientPeer]) -> None:
    _, client = pair
    client.handshake()
    reply = methods(client.method(5, Basic.Qos(prefetch_count=1)))
    assert reply[0].reply_code == 504


def test_oversized_frame_is_501(pair: tuple[Driver, ClientPeer]) -> None:
    _, client = pair
    client.handshake()
    client.open_channel(1)
    reply = methods(client.send(struct.pack(">BHI", 3, 1, 200000) + b"\0" * 200000 + b"\xce"))
    assert reply[0].reply_code == 501


def test_missing_frame_end_is_501(pair: tuple[Driver, ClientPeer]) -> None:
    _, client = pair
    client.handshake()
    raw = frame.marshal(Channel.Open(), 1)
    reply = methods(client.send(raw[:-1] + b"\x00"))
    assert reply[0].reply_code == 501


def test_message_larger_than_max_closes_only_the_channel() -> None:
    driver = Driver(ServerSettings(max_message_size=1000))
    client = ClientPeer(driver)
    client.handshake()
    client.open_channel(1)
    reply = methods(client.publish(1, b"x" * 5000, routing_key="q", frame_max=4096))
    assert isinstance(reply[0], Channel.Close) and reply[0].reply_code == 406
    assert driver.conn.state is State.OPEN
    assert any(isinstance(e, ChannelFailed) for e in driver.events)
    # The body frames that followed were dropped; close-ok frees the channel for reuse.
    client.method(1, Channel.CloseOk())
    client.open_channel(1)


def test_unknown_method_is_a_connection_error(pair: tuple[Driver, ClientPeer]) -> None:
    _, client = pair
    client.handshake()
    client.open_channel(1)
    payload = struct.pack(">HH", 60, 999)
    reply = methods(client.send(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce"))
    assert isinstance(reply[0], Connection.Close) and reply[0].reply_code == 540


def test_truncated_method_is_a_frame_error(pair: tuple[Driver, ClientPeer]) -> None:
    _, client = pair
    client.handshake()
    client.open_channel(1)
    payload = struct.pack(">HH", 50, 10) + b"\x00"  # queue.declare cut short
    reply = methods(client.send(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce"))
    # RabbitMQ: 501 FRAME_ERROR "cannot decode", naming the method.
    assert isinstance(reply[0], Connection.Close) and reply[0].reply_code == 501
    assert (reply[0].class_id, reply[0].method_id) == (50, 10)


def test_client_close_is_answered_and_reported(pair: tuple[Driver, ClientPeer]) -> None:
    driver, client = pair
    client.handshake()
    reply = methods(
        client.method(0, Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
    )
    assert isinstance(reply[0], Connection.CloseOk)
    assert driver.conn.closed
    closed = [e for e in driver.events if isinstance(e, ConnectionClosed)]
    assert closed[0].by_peer


def test_events_are_one_at_a_time_so_answers_stay_in_order(pair: tuple[Driver, ClientPeer]) -> None:
    """channel.close-ok must not overtake the broker's answer to a method sent just before close."""
    driver, client = pair
    client.handshake()
    client.open_channel(1)
    data = frame.marshal(Basic.Qos(prefetch_count=1), 1) + frame.marshal(
        Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0), 1
    )
    driver.conn.receive_data(data)
    first = driver.conn.next_event()
    assert isinstance(first, MethodReceived) and isinstance(first.method, Basic.Qos)
    assert driver.conn.data_to_send() == b""  # close-ok not yet queued
    driver.conn.send_method(1, Basic.QosOk())
    second = driver.conn.next_event()
    assert isinstance(second, MethodReceived) and isinstance(second.method, Channel.Close)
    out = ClientPeer(driver)
    out._pending = driver.conn.data_to_send()
    replies = methods(out.read())
    assert [type(m) for m in replies] == [Basic.QosOk, Channel.CloseOk]


def test_heartbeat_on_a_channel_is_an_unexpected_frame(pair: tuple[Driver, ClientPeer]) -> None:
    _, client = pair
    client.handshake()
    reply = methods(client.send(bytes([8, 0, 1, 0, 0, 0, 0, 0xCE])))
    assert reply[0].reply_code == 505  # as RabbitMQ


def _tune_ok(client: ClientPeer, channel_max: int, frame_max: int) -> list[Any]:
    client.send(PROTOCOL_HEADER)
    client.method(
        0,
        Connection.StartOk(
            client_properties={}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US"
        ),
    )
    return methods(client.method(0, Connection.TuneOk(channel_max=channel_max, frame_max=frame_max)))


def test_channel_max_zero_on_both_sides_means_no_limit() -> None:
    driver = Driver(ServerSettings(channel_max=0))
    client = ClientPeer(driver)
    assert _tune_ok(client, 0, 131072) == []
    assert isinstance(methods(client.method(0, Connection.Open(virtual_host="/")))[0], Connection.OpenOk)
    for number in (1, 65535):  # before: channel_max 0 was the limit, and no channel could open
        client.open_channel(number)


@pytest.mark.parametrize(
    ("channel_max", "frame_max", "text"),
    [
        # rabbit_reader's texts: 0 ("no limit") is above any limit the server offered.
        (0, 131072, "negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)"),
        (2048, 131072, "negotiated channel_max = 2048 is higher than the maximum allowed value (2047)"),
        (10, 0, "negotiated frame_max = 0 is higher than the maximum allowed value (131072)"),
        (10, 131073, "negotiated frame_max = 131073 is higher than the maximum allowed value (131072)"),
        (10, 4095, "negotiated frame_max = 4095 is lower than the minimum allowed value (4096)"),
    ],
)
def test_tune_ok_outside_the_offer_is_refused_as_rabbitmq_does(
    channel_max: int, frame_max: int, text: str
) -> None:
    driver = Driver(ServerSettings(channel_max=2047, frame_max=131072))
    reply = _tune_ok(ClientPeer(driver), channel_max, frame_max)
    assert isinstance(reply[0], Connection.Close)
    assert (reply[0].reply_code, reply[0].reply_text) == (530, f"NOT_ALLOWED - {text}")
    assert (reply[0].class_id, reply[0].method_id) == (10, 30)
