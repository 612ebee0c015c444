"""Hostile bytes never crash the broker: every answer is a protocol error, never 541 INTERNAL_ERROR."""

from __future__ import annotations

import logging
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.commands import Connection

from leveret.broker.node import Node
from leveret.broker.session.connection import ConnectionSession
from leveret.config import Config
from tests.peers import ClientPeer

METHOD_IDS = sorted(commands.INDEX_MAPPING)


def frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + b"\xce"


method_frames = st.builds(
    lambda key, channel, body: frame(1, channel, struct.pack(">I", key) + body),
    st.sampled_from(METHOD_IDS),
    st.integers(0, 3),
    st.binary(max_size=64),
)
any_frames = st.builds(frame, st.sampled_from([1, 2, 3, 8, 9]), st.integers(0, 3), st.binary(max_size=64))


def internal_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Errors logged other than the client log's (which reports every protocol error, as RabbitMQ's)."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.name != "leveret.connection"]


@pytest.fixture
def node() -> Node:
    return Node(Config())


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(frames=st.lists(st.one_of(method_frames, any_frames), min_size=1, max_size=8))
def test_random_frames_get_protocol_errors_not_internal_errors(
    node: Node, frames: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    client = ClientPeer(ConnectionSession(node, "127.0.0.1:1", from_loopback=True))
    client.handshake()
    client.open_channel(1)
    with caplog.at_level(logging.ERROR):
        replies = client.send(b"".join(frames))
    closes = [value for _, value in replies if isinstance(value, Connection.Close)]
    assert all(close.reply_code != 541 for close in closes), closes
    assert not internal_errors(caplog), caplog.text
    client.server.connection_lost()


_VALUES = {
    "shortstr": st.sampled_from(["", "q", "amq.direct", "amq.rabbitmq.reply-to", "x" * 255, "é"]),
    "longstr": st.text(max_size=20),
    "octet": st.integers(0, 255),
    "short": st.integers(0, 65535),
    "long": st.integers(0, 2**32 - 1),
    "longlong": st.integers(0, 2**63 - 1),
    "bit": st.booleans(),
    "table": st.sampled_from(
        [
            {},
            {"x-match": "any"},
            {"x-message-ttl": -1},
            {"alternate-exchange": "amq.fanout"},
            {"x-max-priority": 10},
            {"x-dead-letter-exchange": "amq.direct"},
            {"hash-header": 1},
        ]
    ),
}
# Channel-level methods a client may send (connection-class methods are the handshake's business).
CLIENT_METHODS = [
    cls
    for key, cls in sorted(commands.INDEX_MAPPING.items())
    if key >> 16 not in (10,) and not cls.__name__.endswith("Ok") and cls.__name__ != "Deliver"
]


@st.composite
def valid_methods(draw: st.DrawFn) -> bytes:
    from leveret.amqp.codec import build, encode_method

    cls = draw(st.sampled_from(CLIENT_METHODS))
    fields = {
        name: draw(_VALUES[cls.amqp_type(name)]) for name in cls.__slots__ if cls.amqp_type(name) in _VALUES
    }
    if "exchange_type" in fields:
        fields["exchange_type"] = draw(
            st.sampled_from(["direct", "topic", "headers", "x-consistent-hash", "zz"])
        )
    return encode_method(draw(st.integers(1, 2)), build(cls, **fields))


@settings(
    max_examples=int(os.environ.get("LEVERET_FUZZ_EXAMPLES", "500")),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    deadline=None,
)
@given(methods=st.lists(valid_methods(), min_size=1, max_size=12))
def test_well_formed_methods_with_odd_values_never_crash(
    node: Node, methods: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    client = ClientPeer(ConnectionSession(node, "127.0.0.1:1", from_loopback=True))
    client.handshake()
    client.open_channel(1)
    client.open_channel(2)
    # Something for the methods to act on: a queue named like the sampled names, holding a message.
    client.method(1, commands.Queue.Declare(queue="q"))
    client.publish(1, b"body", routing_key="q")
    with caplog.at_level(logging.ERROR):
        replies = client.send(b"".join(methods))
    closes = [value for _, value in replies if isinstance(value, Connection.Close)]
    assert all(close.reply_code != 541 for close in closes), closes
    assert not internal_errors(caplog), caplog.text
    client.server.connection_lost()
