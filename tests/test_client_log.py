"""The client log's records for what the interop tests cannot provoke quickly through a socket: port
probes, foreign protocol headers, the server dropping a connection, shutdown, frame-level errors.
(interop/test_client_log.py checks the common ones line by line on both brokers.)"""

from __future__ import annotations

import logging

import pytest
from pamqp.commands import Connection, Queue

from leveret.amqp.constants import CONNECTION_FORCED
from leveret.amqp.errors import ConnectionLevelError
from leveret.broker.node import Node
from leveret.broker.session.connection import ConnectionSession
from leveret.config import Config
from tests.peers import ClientPeer


@pytest.fixture
def node() -> Node:
    return Node(Config())


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Records:
    caplog.set_level(logging.DEBUG, logger="leveret.connection")
    return Records(caplog)


class Records:
    """The client log's records of the test so far (caplog keeps one list per test phase)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def lines(self) -> list[tuple[str, str]]:
        return [(r.levelname, r.getMessage()) for r in self.caplog.records if r.name == "leveret.connection"]

    def last(self) -> logging.LogRecord:
        return [r for r in self.caplog.records if r.name == "leveret.connection"][-1]


NAME = "127.0.0.1:40000 -> 127.0.0.1:5672"
SHUTDOWN = "broker forced connection closure with reason 'shutdown'"


def session_of(node: Node) -> ConnectionSession:
    session = ConnectionSession(node, "127.0.0.1:40000", from_loopback=True)
    session.local = "127.0.0.1:5672"
    return session


def test_a_port_probe_is_only_a_debug_record(node: Node, records: Records) -> None:
    session_of(node).connection_lost()
    assert records.lines() == [("DEBUG", "closing AMQP connection (127.0.0.1:40000 -> 127.0.0.1:5672)")]


def test_an_http_request_on_the_amqp_port(node: Node, records: Records) -> None:
    session = session_of(node)
    session.accepted()
    session.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    session.connection_lost()
    assert records.lines()[-1] == (
        "ERROR",
        "closing AMQP connection (127.0.0.1:40000 -> 127.0.0.1:5672): HTTP request detected on AMQP port. "
        "Ensure the client is connecting to the correct port.",
    )


def test_missed_heartbeats(node: Node, records: Records) -> None:
    session = session_of(node)
    session.accepted()
    ClientPeer(session).handshake()
    session.connection_lost(reason="missed heartbeats from client, timeout: 60s")
    assert records.lines()[-1] == (
        "ERROR",
        f"closing AMQP connection ({NAME}): missed heartbeats from client, timeout: 60s",
    )


def test_shutdown_closes_with_connection_forced(node: Node, records: Records) -> None:
    session = session_of(node)
    ClientPeer(session).handshake()
    session.close(ConnectionLevelError(CONNECTION_FORCED, SHUTDOWN))
    level, message = records.lines()[-1]
    assert level == "ERROR" and message == (
        f"Error on AMQP connection ({NAME}, vhost: '/', user: 'guest', state: running), "
        f'channel 0: operation none caused a connection exception connection_forced: "{SHUTDOWN}"'
    )
    assert records.last().reply_code == 320  # type: ignore[attr-defined]  # an `extra` field


def test_a_frame_error_names_its_channel(node: Node, records: Records) -> None:
    session = session_of(node)
    client = ClientPeer(session)
    client.handshake()
    client.open_channel(3)
    client.method(3, Queue.Declare(queue="q"))
    client.send(b"\x03\x00\x03\x00\x00\x00\x01x\xce")  # a body frame with no publish before it
    (level, message), closing = records.lines()[-2:]
    assert closing == ("INFO", f"closing AMQP connection ({NAME}, vhost: '/', user: 'guest')")
    assert level == "ERROR"
    assert message.endswith(
        "state: running), channel 3: operation none caused a connection exception unexpected_frame: "
        '"expected method frame, got non method frame instead"'  # RabbitMQ 3.10's text
    )


def test_a_message_too_large_is_a_channel_error(records: Records) -> None:
    from dataclasses import replace

    from leveret.config.schema import Limits

    node = Node(replace(Config(), limits=replace(Limits(), max_message_size=10)))
    client = ClientPeer(session_of(node))
    client.handshake()
    client.open_channel(1)
    client.publish(1, b"x" * 11, routing_key="q")
    assert records.lines()[-1] == (
        "ERROR",
        f"Channel error on connection ({NAME}, vhost: '/', user: 'guest'), channel 1: "
        "operation basic.publish caused a channel exception precondition_failed: "
        "message size 11 is larger than configured max size 10",
    )


def test_a_loopback_user_from_elsewhere_is_refused_with_the_reason_logged(
    node: Node, records: Records
) -> None:
    session = ConnectionSession(node, "10.1.2.3:40000", from_loopback=False)
    session.local = "10.1.2.1:5672"
    client = ClientPeer(session)
    client.send(b"AMQP\x00\x00\x09\x01")
    replies = client.method(0, Connection.StartOk(
        client_properties={"capabilities": {"authentication_failure_close": True}},
        mechanism="PLAIN", response="\0guest\0guest", locale="en_US",
    ))
    close = replies[-1][1]
    assert isinstance(close, Connection.Close) and close.reply_code == 403
    # The client is pointed at the log, and only the log says why.
    assert close.reply_text == (
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
        "For details see the broker logfile."
    )
    assert records.lines()[-2:] == [
        ("ERROR", "Error on AMQP connection (10.1.2.3:40000 -> 10.1.2.1:5672, state: starting): "
                  "PLAIN login refused: user 'guest' can only connect via localhost"),
        ("INFO", "closing AMQP connection (10.1.2.3:40000 -> 10.1.2.1:5672)"),
    ]
