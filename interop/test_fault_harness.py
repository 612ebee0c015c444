"""The fault harness's own instruments, in the default run: the proxy's modes on an echo server, and a
short smoke of load + faults + checker on the broker under test (both brokers)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from interop.checker.history import read_directory
from interop.conftest import new_broker
from interop.faults.load import Load, node_available
from interop.faults.owners import tagger
from interop.faults.proxy import FaultProxy, ProxyHub

QUIET = 0.3  # how long "nothing arrives" is watched for


@pytest.fixture
def hub() -> Iterator[ProxyHub]:
    started = ProxyHub()
    yield started
    started.close()


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()
    server.close()


def _echo(connection: socket.socket) -> None:
    with connection:
        try:
            while data := connection.recv(4096):
                connection.sendall(data)
        except OSError:
            pass


def dial(proxy: FaultProxy) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", proxy.port))
    connection.settimeout(5)
    return connection


def receive(connection: socket.socket, size: int, timeout: float = 5) -> bytes:
    connection.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def silent(connection: socket.socket) -> bool:
    connection.settimeout(QUIET)
    try:
        connection.recv(100)
    except TimeoutError:
        return True
    return False


def test_pause_holds_bytes_until_heal(hub: ProxyHub, echo: tuple[str, int]) -> None:
    proxy = hub.add(echo)
    with dial(proxy) as connection:
        connection.sendall(b"one")
        assert receive(connection, 3) == b"one"
        proxy.pause("up")
        connection.sendall(b"held")
        assert silent(connection)
        proxy.heal()
        assert receive(connection, 4) == b"held"


def test_drop_loses_bytes_and_keeps_the_connection(hub: ProxyHub, echo: tuple[str, int]) -> None:
    proxy = hub.add(echo)
    with dial(proxy) as connection:
        proxy.drop("down")
        connection.sendall(b"gone")
        assert silent(connection)
        proxy.heal()
        connection.sendall(b"back")
        assert receive(connection, 4) == b"back"


def closed_by_proxy(connection: socket.socket) -> bool:
    """True once the proxy reset or closed the connection."""
    try:
        connection.sendall(b"?")
        return receive(connection, 1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_cut_resets_and_refuses_until_heal(hub: ProxyHub, echo: tuple[str, int]) -> None:
    proxy = hub.add(echo)
    with dial(proxy) as connection:
        connection.sendall(b"x")
        assert receive(connection, 1) == b"x"
        proxy.cut()
        assert closed_by_proxy(connection)
    with dial(proxy) as refused:
        assert closed_by_proxy(refused)
    proxy.heal()
    with dial(proxy) as connection:
        connection.sendall(b"z")
        assert receive(connection, 1) == b"z"


def test_a_rule_for_one_client_leaves_the_others(hub: ProxyHub, echo: tuple[str, int]) -> None:
    proxy = hub.add(echo, tagger(lambda: {os.getpid(): "this-process"}))
    with dial(proxy) as connection:
        proxy.pause(client="another-process")
        connection.sendall(b"free")
        assert receive(connection, 4) == b"free"
        proxy.pause(client="this-process")
        connection.sendall(b"held")
        assert silent(connection)
        proxy.heal()
        assert receive(connection, 4) == b"held"


def test_smoke_load_faults_and_verdict(tmp_path: Path, hub: ProxyHub) -> None:
    """pika and amqplib clients through a proxy to a throwaway broker; a cut of the proxy, then kill -9
    and restart of the broker; the checker finds every confirmed message delivered."""
    broker = new_broker(tmp_path / "broker")
    broker.start()
    proxy = hub.add((broker.host, broker.port))
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    # Classic durable queues: a single RabbitMQ node is slow to bring quorum queues back after kill -9.
    queues = ["smoke-a", "smoke-b"]
    load = Load(tmp_path / "load", [url, broker.url], queues, queue_type="classic", publishers=1, idle=2)
    load.start()
    try:
        load.wait_confirmed(200, timeout=30)
        load.fault("cut", "proxy")
        proxy.cut()
        load.wait_confirmed(load.confirmed_so_far() + 100, timeout=30)
        proxy.heal()
        load.fault("kill -9", "broker")
        broker.kill()
        broker.start()
        load.wait_confirmed(load.confirmed_so_far() + 100, timeout=60)
        verdict = load.finish()
    finally:
        load.stop()
        broker.close()
    print(verdict.summary())
    assert verdict.ok, verdict.problems()
    assert verdict.faults == 2 and verdict.confirmed >= 400
    delivered_by = {event["client"] for event in read_directory(load.history_dir) if event["op"] == "deliver"}
    assert "pika-c1" in delivered_by
    if node_available():
        assert "node-c1" in delivered_by
