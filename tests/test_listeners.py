"""Listeners on several hosts (RabbitMQ's listeners.tcp.N): loopback on both families by default, an address
the machine lacks skipped, and guest accepted from loopback on both families only."""

from __future__ import annotations

import functools
import socket
from pathlib import Path

import httpx
import pytest
import trio
from pamqp.commands import Channel, Connection

from leveret.amqp.constants import PROTOCOL_HEADER
from leveret.broker.management.server import serve_management
from leveret.broker.node import Node
from leveret.broker.server.connection_task import _is_loopback
from leveret.broker.server.listener import serve_amqp
from leveret.broker.server.main import bind_listeners
from leveret.broker.server.startup import ListenerSetting, StartError, bind_host, open_listeners
from leveret.broker.session.connection import ConnectionSession
from leveret.config import Config, load_config
from tests.peers import ClientPeer, methods
from tests.trio_client import TrioClient

# An address from TEST-NET-1 (RFC 5737): never assigned to this machine, so binding it fails.
ABSENT = "192.0.2.1"
AMQP = ListenerSetting("AMQP", "listeners.amqp", host_flag="--host", port_flag="--port")


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")


@needs_ipv6
async def test_the_default_hosts_serve_guest_on_both_loopbacks() -> None:
    config = Config()
    assert config.listeners.amqp.hosts == ("127.0.0.1", "::1")
    port = free_port()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_amqp, Node(config), config.listeners.amqp.hosts, port)
        bound = sorted(listener.socket.getsockname()[:2] for listener in listeners)
        assert bound == [("127.0.0.1", port), ("::1", port)]
        for host in ("::1", "127.0.0.1"):
            client = TrioClient(await trio.open_tcp_stream(host, port))
            await client.handshake()  # guest, loopback only: accepted from either family
            await client.send(1, Channel.Open())
            assert isinstance(await client.receive(), Channel.OpenOk)
            await client.send(0, Connection.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
            assert isinstance(await client.receive(), Connection.CloseOk)
            await client.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_an_address_the_machine_lacks_is_skipped_beside_one_it_has(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    listeners = await open_listeners(AMQP, (ABSENT, "127.0.0.1"), port)
    try:
        assert [listener.socket.getsockname() for listener in listeners] == [("127.0.0.1", port)]
    finally:
        for listener in listeners:
            await listener.aclose()
    assert f"not listening for AMQP on {ABSENT} port {port}" in caplog.text


async def test_no_address_to_listen_on_is_an_error() -> None:
    port = free_port()
    with pytest.raises(StartError) as caught:
        await open_listeners(AMQP, (ABSENT,), port)
    assert str(caught.value) == (
        f"cannot listen for AMQP on {ABSENT}:{port}: cannot assign requested address; "
        "set another address with listeners.amqp.host (--host)"
    )


async def test_a_port_in_use_is_an_error_even_beside_a_free_host() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartError, match="address already in use; set another port"):
            await open_listeners(AMQP, (ABSENT, "127.0.0.1"), port)


def test_double_colon_means_every_address_of_both_families() -> None:
    # trio's host=None: one listener per family on every address, as RabbitMQ's dual-stack "::".
    assert bind_host("::") is None
    assert bind_host("0.0.0.0") == "0.0.0.0"
    assert bind_host("::1") == "::1"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 client of a dual-stack socket
        ("::ffff:10.0.0.1", False),
        ("10.0.0.1", False),
        ("2001:db8::1", False),
        ("fe80::1%lo", False),
    ],
)
def test_loopback_peers_on_both_families(host: str, loopback: bool) -> None:
    assert _is_loopback(host) is loopback


def test_guest_is_refused_from_a_peer_that_is_not_loopback() -> None:
    client = ClientPeer(ConnectionSession(Node(Config()), "[2001:db8::1]:50000", from_loopback=False))
    client.send(PROTOCOL_HEADER)
    start_ok = Connection.StartOk(
        # Without this capability RabbitMQ (and Leveret) closes a refused login without a word.
        client_properties={"capabilities": {"authentication_failure_close": True}},
        mechanism="PLAIN",
        response="\0guest\0guest",
        locale="en_US",
    )
    (close,) = methods(client.method(0, start_ok))
    assert isinstance(close, Connection.Close)
    assert (close.reply_code, close.reply_text) == (
        403,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker "
        "logfile.",
    )


@needs_ipv6
async def test_run_node_binds_every_listener_on_both_loopbacks(tmp_path: Path) -> None:
    """What `run_node` binds before it opens the store: AMQP and the management API on each host, one
    port each; guest reaches the management API over ::1 (loopback)."""
    amqp_port, http_port = free_port(), free_port()
    config = load_config(overrides={
        "listeners.amqp.port": amqp_port,
        "listeners.management": {"host": ["127.0.0.1", "::1", ABSENT], "port": http_port},
        "data_dir": str(tmp_path),
    })
    bound = await bind_listeners(config)
    try:
        assert sorted(listener.socket.getsockname()[:2] for listener in bound.amqp) == [
            ("127.0.0.1", amqp_port), ("::1", amqp_port)
        ]
        assert sorted(sock.getsockname()[:2] for sock in bound.management) == [
            ("127.0.0.1", http_port), ("::1", http_port)
        ]
        node = Node(config, clock=trio.current_time)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(serve_management, sockets=bound.management), node, (), http_port
            )
            async with httpx.AsyncClient(auth=("guest", "guest")) as http:
                answer = await http.get(f"http://[::1]:{http_port}/api/whoami")
            assert answer.json() == {"name": "guest", "tags": ["administrator"]}
            nursery.cancel_scope.cancel()
    finally:
        bound.close()
