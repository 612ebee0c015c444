"""A local cluster (3 etcd members, 3 Leveret nodes on loopback) driven by real clients.

Leveret only: a RabbitMQ cluster is not started here (the behaviours checked are single-node RabbitMQ's,
observed through several nodes).
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pika
import pika.exceptions
import pytest

from interop.cluster_support import start_cluster
from interop.conftest import BROKER_KIND
from leveret.broker.cluster.keys import KeyLayout
from leveret.broker.server.local_cluster import LocalCluster, etcd_binary, free_ports, python_command

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="starts Leveret nodes of its own")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from start_cluster(tmp_path_factory.mktemp("cluster"))


def registered_nodes(cluster: LocalCluster) -> list[str]:
    prefix = b"/leveret/nodes/"
    body = {
        "key": base64.b64encode(prefix).decode(),
        "range_end": base64.b64encode(b"/leveret/nodes0").decode(),
    }
    answer = httpx.post(f"{cluster.etcd.endpoints[0]}/v3/kv/range", json=body, timeout=2).json()
    return sorted(base64.b64decode(kv["key"])[len(prefix) :].decode() for kv in answer.get("kvs", []))


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_killed_node_is_dead_to_the_cluster_and_returns(cluster: LocalCluster) -> None:
    assert registered_nodes(cluster) == ["node1", "node2", "node3"]
    owner = connect(cluster, 2)
    owner.channel().queue_declare("excl.dies", exclusive=True)
    first = connect(cluster, 0)
    assert passive_queue(first, "excl.dies") == 405
    cluster.kill_node(2)  # kill -9: no revoke, the lease runs out (lease_ttl 2 s)
    killed = time.monotonic()
    try:
        eventually(lambda: registered_nodes(cluster) == ["node1", "node2"], timeout=8)
        assert time.monotonic() - killed > 1.5
        # The exclusive queue's record lived by node3's lease: the name is free again.
        eventually(lambda: passive_queue(first, "excl.dies") == 404, timeout=3)
        first.close()
    finally:
        cluster.start_node(cluster.nodes[2])
        cluster.wait_node(cluster.nodes[2])
    assert registered_nodes(cluster) == ["node1", "node2", "node3"]


def connect(cluster: LocalCluster, index: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(cluster.nodes[index].amqp_url))


def passive_exchange(connection: pika.BlockingConnection, name: str) -> int | None:
    """None when the exchange is there, else the reply code that closed the channel."""
    channel = connection.channel()
    try:
        channel.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as closed:
        return closed.reply_code
    channel.close()
    return None


def passive_queue(connection: pika.BlockingConnection, name: str) -> int | None:
    channel = connection.channel()
    try:
        channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as closed:
        return closed.reply_code
    channel.close()
    return None


def test_declare_on_one_node_is_seen_on_the_others(cluster: LocalCluster) -> None:
    a, b, c = (connect(cluster, i) for i in range(3))
    try:
        channel = a.channel()
        channel.exchange_declare("meta.x1", "topic", durable=True)
        channel.queue_declare("meta.q1", durable=True, arguments={"x-max-length": 10})
        channel.queue_bind("meta.q1", "meta.x1", "a.*")
        # Right after declare-ok on A, a passive declare on B or C finds them (no waiting for a watch).
        for connection in (b, c):
            assert passive_exchange(connection, "meta.x1") is None
            assert passive_queue(connection, "meta.q1") is None
        assert passive_exchange(b, "meta.nothing") == 404
        assert passive_queue(c, "meta.nothing") == 404
    finally:
        for connection in (a, b, c):
            connection.close()


def test_binding_declared_on_a_routes_on_c(cluster: LocalCluster) -> None:
    a, c = connect(cluster, 0), connect(cluster, 2)
    try:
        channel = a.channel()
        channel.exchange_declare("meta.x2", "direct")
        channel.queue_declare("meta.q2")
        channel.queue_bind("meta.q2", "meta.x2", "k")
        on_c = c.channel()
        on_c.confirm_delivery()
        # Routed on C: meta.q2 is not durable, so it is local to each node and C's own instance holds it.
        eventually(lambda: on_c.queue_declare("meta.q2", passive=True).method.message_count == 0)
        on_c.basic_publish("meta.x2", "k", b"routed on C", mandatory=True)
        method, _, body = on_c.basic_get("meta.q2", auto_ack=True)
        assert method is not None and body == b"routed on C"
    finally:
        a.close()
        c.close()


def test_inequivalent_redeclare_on_another_node_is_406(cluster: LocalCluster) -> None:
    a, c = connect(cluster, 0), connect(cluster, 2)
    try:
        a.channel().queue_declare("meta.q3", durable=True)
        a.channel().exchange_declare("meta.x3", "fanout")
        channel = c.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
            channel.queue_declare("meta.q3", durable=False)
        assert caught.value.reply_code == 406
        assert caught.value.reply_text == (
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'meta.q3' in vhost '/': "
            "received 'false' but current is 'true'"
        )
        channel = c.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
            channel.exchange_declare("meta.x3", "direct")
        assert caught.value.reply_code == 406
        assert "inequivalent arg 'type' for exchange 'meta.x3'" in caught.value.reply_text
        c.channel().queue_declare("meta.q3", durable=True)  # an equivalent redeclare is fine
    finally:
        a.close()
        c.close()


def test_delete_on_b_disappears_from_a(cluster: LocalCluster) -> None:
    a, b = connect(cluster, 0), connect(cluster, 1)
    try:
        channel = a.channel()
        channel.exchange_declare("meta.x4", "direct", durable=True)
        channel.queue_declare("meta.q4", durable=True)
        on_b = b.channel()
        on_b.queue_delete("meta.q4")
        on_b.exchange_delete("meta.x4")
        eventually(lambda: passive_queue(a, "meta.q4") == 404, timeout=5)
        eventually(lambda: passive_exchange(a, "meta.x4") == 404, timeout=5)
        # Declared again (a new incarnation), with other arguments: no conflict with the old one.
        on_b.queue_declare("meta.q4", durable=False)
        eventually(lambda: passive_queue(a, "meta.q4") is None)
    finally:
        a.close()
        b.close()


def test_single_node_redeclare_rules_still_hold_in_a_cluster(cluster: LocalCluster) -> None:
    a = connect(cluster, 0)
    try:
        channel = a.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
            channel.queue_declare("amq.meta", durable=True)
        assert caught.value.reply_code == 403
        channel = a.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
            channel.queue_declare("meta.bad", arguments={"x-max-length": -1})
        assert caught.value.reply_code == 406
        assert passive_queue(connect(cluster, 1), "meta.bad") == 404
        named = a.channel().queue_declare("", exclusive=True).method.queue  # local to this node
        assert named.startswith("amq.gen-")
    finally:
        a.close()


def queue_leader(cluster: LocalCluster, name: str) -> int | None:
    """The index of the node leading a replicated queue, from etcd (None: no leader now)."""
    body = {"key": base64.b64encode(KeyLayout("/leveret/").leader("/", name)).decode()}
    answer = httpx.post(f"{cluster.etcd.endpoints[0]}/v3/kv/range", json=body, timeout=2).json()
    kvs = answer.get("kvs", [])
    return int(json.loads(base64.b64decode(kvs[0]["value"]))["node"][-1]) - 1 if kvs else None


def publish_on_leader(cluster: LocalCluster, name: str, body: bytes) -> None:
    """A confirmed persistent publish on the queue's leader's node (nacked while it builds the queue)."""

    def confirmed() -> bool:
        index = queue_leader(cluster, name)
        if index is None:
            return False
        try:
            with connect(cluster, index) as connection:
                channel = connection.channel()
                channel.confirm_delivery()
                channel.basic_publish("", name, body, pika.BasicProperties(delivery_mode=2))
            return True
        except (pika.exceptions.NackError, pika.exceptions.AMQPConnectionError):
            return False

    eventually(confirmed, timeout=20)


def test_a_returning_node_keeps_what_etcd_keeps(cluster: LocalCluster) -> None:
    a = connect(cluster, 0)
    try:
        a.channel().queue_declare("meta.q5", durable=True)
        a.channel().exchange_declare("meta.x5", "direct", durable=True)
        c = connect(cluster, 2)
        eventually(lambda: passive_exchange(c, "meta.x5") is None)
        c.close()
        publish_on_leader(cluster, "meta.q5", b"kept")  # a replicated queue's messages are its leader's
        cluster.kill_node(2)
        try:
            a.channel().exchange_delete("meta.x5")  # while node3 is down
        finally:
            cluster.start_node(cluster.nodes[2])
            cluster.wait_node(cluster.nodes[2])
    finally:
        a.close()
    c = connect(cluster, 2)
    try:
        assert passive_exchange(c, "meta.x5") == 404  # its own disk had it; etcd does not
    finally:
        c.close()
    got: list[bytes] = []

    def consumed() -> bool:  # on the leader's node, which may have moved when node3 was killed
        index = queue_leader(cluster, "meta.q5")
        if index is None:
            return False
        try:
            with connect(cluster, index) as connection:
                method, _, body = connection.channel().basic_get("meta.q5", auto_ack=True)
        except pika.exceptions.AMQPError:
            return False
        if method is not None:
            got.append(body)
        return bool(got)

    eventually(consumed, timeout=20)
    assert got == [b"kept"]  # the confirmed message survived the loss of a node


def test_what_a_declared_b_uses_at_once(cluster: LocalCluster) -> None:
    """No waiting for B's watch: a method naming what B lacks asks etcd first."""
    a, b = connect(cluster, 0), connect(cluster, 1)
    try:
        for i in range(20):
            a.channel().exchange_declare(f"meta.x6.{i}", "fanout")
            a.channel().queue_declare(f"meta.q6.{i}")
            on_b = b.channel()
            on_b.queue_bind(f"meta.q6.{i}", f"meta.x6.{i}")
            on_b.basic_publish(f"meta.x6.{i}", "", b"m")
            method, _, body = on_b.basic_get(f"meta.q6.{i}", auto_ack=True)
            assert method is not None and body == b"m"
    finally:
        a.close()
        b.close()


def test_a_node_that_cannot_reach_etcd_says_so_and_exits(tmp_path: Path) -> None:
    dead, peer = free_ports(2)
    config = tmp_path / "cluster.yaml"
    config.write_text(
        "cluster:\n"
        "  nodes:\n"
        f'    - {{name: a, amqp: "127.0.0.1:{dead}", peer: "127.0.0.1:{peer}", data_dir: "{tmp_path}/a"}}\n'
        "  etcd:\n"
        f'    endpoints: ["http://127.0.0.1:{dead}"]\n'
        "    request_timeout: 0.2\n"
    )
    done = subprocess.run(
        [*python_command(), "--config", str(config), "--node", "a"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith(f"leveret: cannot reach etcd at http://127.0.0.1:{dead}: ")


def test_dev_cluster_command_prints_urls_and_stops_everything(tmp_path: Path) -> None:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed")
    command = [*python_command(), "dev-cluster", "--nodes", "3", "--management", "--dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        assert process.stdout is not None
        while not lines or "Ctrl-C" not in lines[-1]:
            line = process.stdout.readline()
            assert line, "dev-cluster exited: " + "".join(lines)
            lines.append(line)
        nodes = [line.split() for line in lines if line.startswith("node")]
        assert [fields[0] for fields in nodes] == ["node1:", "node2:", "node3:"]
        urls = [fields[1] for fields in nodes]
        assert all(
            fields[2] == "management" and fields[3].startswith("http://127.0.0.1:") for fields in nodes
        )
        first = pika.BlockingConnection(pika.URLParameters(urls[0]))
        first.channel().exchange_declare("dev.x", "fanout")
        first.close()
        third = pika.BlockingConnection(pika.URLParameters(urls[2]))
        third.channel().exchange_declare("dev.x", passive=True)
        third.close()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    ports = [int(url.rsplit(":", 1)[1].rstrip("/")) for url in urls]
    for port in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def _declare_in_race(
    connection: pika.BlockingConnection, name: str, length: int, barrier: threading.Barrier, outcomes: dict
) -> None:
    channel = connection.channel()
    barrier.wait()
    try:
        channel.queue_declare(name, arguments={"x-max-length": length})
        outcomes[length] = 200
    except pika.exceptions.ChannelClosedByBroker as closed:
        outcomes[length] = closed.reply_code


def test_racing_declares_on_three_nodes_agree(cluster: LocalCluster) -> None:
    """Three nodes declare the same queue with different arguments at once: one definition wins in etcd,
    its declarer gets declare-ok, the other two get 406, and every node ends up holding the winner."""
    connections = [connect(cluster, i) for i in range(3)]
    try:
        for round_ in range(10):
            name = f"race.q{round_}"
            barrier = threading.Barrier(3)
            outcomes: dict[int, int] = {}
            threads = [
                threading.Thread(
                    target=_declare_in_race, args=(connections[i], name, i + 1, barrier, outcomes)
                )
                for i in range(3)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert sorted(outcomes.values()) == [200, 406, 406], outcomes
            [winner] = [length for length, code in outcomes.items() if code == 200]
            for connection in connections:
                channel = connection.channel()
                channel.queue_declare(name, arguments={"x-max-length": winner})  # equivalent everywhere
                channel.close()
    finally:
        for connection in connections:
            connection.close()


def test_an_exclusive_queue_is_locked_on_every_node(cluster: LocalCluster) -> None:
    a, c = connect(cluster, 0), connect(cluster, 2)
    try:
        a.channel().queue_declare("excl.q1", exclusive=True)
        locked = (
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'excl.q1' in vhost '/'. "
            "It could be originally declared on another connection or the exclusive property value does "
            "not match that of the original declaration."
        )
        for attempt in (
            lambda ch: ch.queue_declare("excl.q1", exclusive=True),
            lambda ch: ch.queue_declare("excl.q1", passive=True),
            lambda ch: ch.basic_consume("excl.q1", lambda *args: None),
        ):
            channel = c.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
                attempt(channel)
            assert (caught.value.reply_code, caught.value.reply_text) == (405, locked)
        a.close()  # the owner's connection goes, and the queue with it, on every node
        eventually(lambda: passive_queue(c, "excl.q1") == 404, timeout=5)
        c.channel().queue_declare("excl.q1", exclusive=True)
    finally:
        if a.is_open:
            a.close()
        c.close()


def test_server_named_queues_are_known_on_every_node(cluster: LocalCluster) -> None:
    """As in a RabbitMQ cluster: another node's connections get 405 for an exclusive server-named queue
    (as another connection on its own node does) and find a shared one; the owner's close frees it."""
    a, c = connect(cluster, 0), connect(cluster, 2)
    try:
        exclusive = a.channel().queue_declare("", exclusive=True).method.queue
        shared = a.channel().queue_declare("", auto_delete=False).method.queue
        assert exclusive.startswith("amq.gen-") and shared.startswith("amq.gen-")
        assert passive_queue(a, exclusive) is None  # the name declare-ok gave is the one stored
        eventually(lambda: passive_queue(c, exclusive) == 405, timeout=5)
        eventually(lambda: passive_queue(c, shared) is None, timeout=5)
        a.channel().queue_delete(shared)
        a.close()
        eventually(lambda: passive_queue(c, exclusive) == 404, timeout=5)
        eventually(lambda: passive_queue(c, shared) == 404, timeout=5)
    finally:
        if a.is_open:
            a.close()
        c.close()


def test_nodes_ride_out_the_loss_of_all_etcd(tmp_path: Path) -> None:
    """Without etcd, messages keep flowing (etcd is never touched per message) and a declare fails with
    541 after its timeout; once etcd is back, the nodes register again and declares work."""
    if etcd_binary() is None:
        pytest.skip("etcd is not installed")
    cluster = LocalCluster(tmp_path, 3, etcd_request_timeout=0.3)
    try:
        cluster.start()
        a = connect(cluster, 0)
        channel = a.channel()
        channel.queue_declare("outage.q")
        for index in range(3):
            cluster.etcd.kill(index)
        for i in range(100):
            channel.basic_publish("", "outage.q", str(i).encode())
        assert [channel.basic_get("outage.q", auto_ack=True)[2] for _ in range(100)] == [
            str(i).encode() for i in range(100)
        ]
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as caught:
            a.channel().queue_declare("outage.new")
        assert caught.value.reply_code == 541
        assert "cluster metadata store unavailable" in caught.value.reply_text
        time.sleep(3.5)  # longer than the nodes' lease TTL (2 s) without a keepalive
        cluster.etcd.restart(0, 1, 2)
        eventually(lambda: registered_nodes(cluster) == ["node1", "node2", "node3"], timeout=15)
        b = connect(cluster, 1)
        connect(cluster, 0).channel().queue_declare("outage.new")
        assert passive_queue(b, "outage.new") is None
        b.close()
    finally:
        cluster.stop()
