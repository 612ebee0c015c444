"""Any node, unchanged clients: a replicated queue has one copy, at its leader, and every node reaches it.

Declared on one node, published to on another, consumed on a third, with pika and with node's amqplib; a
consistent-hash exchange spreading keys over queues led by different nodes; basic.get, purge, counts and
delete asked on a node that does not lead the queue; a consumer whose queue's leader is killed (it keeps
its unacked messages under their delivery tags, and acks on the wire at the kill are not lost); a fourth
node's share. Leveret only (a RabbitMQ cluster is not started here).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pika
import pika.exceptions
import pytest

from interop.clients import NODE_DIR, client_env, run_client
from interop.cluster_support import eventually, queue_leaders, start_cluster
from interop.conftest import BROKER_KIND
from leveret.broker.cluster.remote import RESERVE_FOR
from leveret.broker.server.local_cluster import LocalCluster

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="starts Leveret nodes of its own")

PERSISTENT = pika.BasicProperties(delivery_mode=2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from start_cluster(tmp_path_factory.mktemp("anynode"), management=True)


def connect(cluster: LocalCluster, index: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(cluster.nodes[index].amqp_url))


def index_of(cluster: LocalCluster, name: str) -> int:
    return [node.name for node in cluster.nodes].index(name)


def led_by(cluster: LocalCluster, queues: list[str]) -> dict[str, str]:
    return eventually(lambda: (found := queue_leaders(cluster)).keys() >= set(queues) and found)


def consume(connection: pika.BlockingConnection, queues: list[str], count: int, *, prefetch: int = 50,
            timeout: float = 30.0) -> list[tuple[str, bytes]]:
    """(queue, body) of `count` deliveries, acked one by one, in arrival order."""
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    got: list[tuple[str, bytes]] = []

    def on_message(queue: str) -> Any:
        def received(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            got.append((queue, body))
            ch.basic_ack(method.delivery_tag)

        return received

    tags = [channel.basic_consume(queue, on_message(queue)) for queue in queues]
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        connection.process_data_events(0.1)
    for tag in tags:
        channel.basic_cancel(tag)
    channel.close()
    return got


def test_declare_on_a_publish_on_b_consume_on_c_with_pika(cluster: LocalCluster) -> None:
    a, b, c = (connect(cluster, i) for i in range(3))
    try:
        a.channel().queue_declare("any.pika", durable=True)
        publisher = b.channel()
        publisher.confirm_delivery()  # each publish returns once the leader confirmed it
        for i in range(300):
            publisher.basic_publish("", "any.pika", str(i).encode(), PERSISTENT)
        # Every node answers with the leader's count.
        for connection in (a, b, c):
            assert connection.channel().queue_declare("any.pika", passive=True).method.message_count == 300
        got = consume(c, ["any.pika"], 300, prefetch=20)
        assert [int(body) for _, body in got] == list(range(300))  # each once, in publish order
        # cancel-ok came once the leader had the cancel: every node counts no consumer at once.
        for connection in (a, b, c):
            ok = connection.channel().queue_declare("any.pika", passive=True).method
            assert (ok.message_count, ok.consumer_count) == (0, 0)
    finally:
        for connection in (a, b, c):
            connection.close()


@pytest.mark.usefixtures("node_modules")
def test_declare_on_a_publish_on_b_consume_on_c_with_amqplib(cluster: LocalCluster, tmp_path: Path) -> None:
    a = connect(cluster, 0)
    try:
        a.channel().queue_declare("any.amqplib", durable=True)
    finally:
        a.close()
    leader = led_by(cluster, ["any.amqplib"])["any.amqplib"]
    others = [i for i, node in enumerate(cluster.nodes) if node.name != leader]
    publisher, consumer = cluster.nodes[others[0]], cluster.nodes[others[1]]  # neither leads the queue
    script = str(NODE_DIR / "confirm_publish.js")
    out = run_client(["node", script, "any.amqplib", "200"], tmp_path, client_env(publisher.amqp_url))
    assert out.splitlines()[0] == "confirmed 200"
    script = str(NODE_DIR / "drain_queue.js")
    out = run_client(["node", script, "any.amqplib", "200"], tmp_path, client_env(consumer.amqp_url))
    assert out.splitlines() == [f"message {i} false" for i in range(200)]


@pytest.mark.usefixtures("node_modules")
def test_consistent_hash_exchange_spreads_keys_over_queues_led_by_different_nodes(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    queues = [f"any.hash.{i}" for i in range(8)]
    a = connect(cluster, 0)
    try:
        channel = a.channel()
        channel.exchange_declare("any.hash", "x-consistent-hash", durable=True)
        for queue in queues:
            channel.queue_declare(queue, durable=True)
            channel.queue_bind(queue, "any.hash", "1")
    finally:
        a.close()
    leaders = led_by(cluster, queues)
    assert {leaders[q] for q in queues} == {"node1", "node2", "node3"}  # the stream is split three ways
    count = 10_000
    script = str(NODE_DIR / "publish_keys.js")
    env = client_env(cluster.nodes[1].amqp_url)
    out = run_client(["node", script, "any.hash", str(count)], tmp_path, env)
    assert out.splitlines() == [f"confirmed {count}"]
    c = connect(cluster, 2)
    try:
        got = consume(c, queues, count, prefetch=200, timeout=60)
    finally:
        c.close()
    bodies = sorted(int(body) for _, body in got)
    assert bodies == list(range(count))  # every message once
    per_queue = {queue: sum(1 for q, _ in got if q == queue) for queue in queues}
    assert all(n > count / len(queues) / 2 for n in per_queue.values()), per_queue


def test_get_purge_counts_and_delete_on_a_node_that_does_not_lead_the_queue(cluster: LocalCluster) -> None:
    a = connect(cluster, 0)
    a.channel().queue_declare("any.calls", durable=True)
    a.close()
    leader = led_by(cluster, ["any.calls"])["any.calls"]
    other = connect(cluster, next(i for i, n in enumerate(cluster.nodes) if n.name != leader))
    try:
        channel = other.channel()
        channel.confirm_delivery()
        for i in range(10):
            channel.basic_publish("", "any.calls", f"m{i}".encode(), PERSISTENT)
        assert channel.queue_declare("any.calls", passive=True).method.message_count == 10
        method, _, body = channel.basic_get("any.calls")
        assert (body, method.message_count, method.redelivered) == (b"m0", 9, False)
        channel.basic_nack(method.delivery_tag, requeue=True)  # back at the leader, redelivered
        method, _, body = channel.basic_get("any.calls")
        assert (body, method.redelivered) == (b"m0", True)
        channel.basic_ack(method.delivery_tag)
        method, _, body = channel.basic_get("any.calls", auto_ack=True)
        assert (body, method.message_count) == (b"m1", 8)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
            other.channel().queue_delete("any.calls", if_empty=True)
        assert caught.value.reply_code == 406
        assert caught.value.reply_text == "PRECONDITION_FAILED - queue 'any.calls' in vhost '/' not empty"
        channel = other.channel()
        assert channel.queue_purge("any.calls").method.message_count == 8
        assert channel.basic_get("any.calls") == (None, None, None)
        channel.basic_publish("", "any.calls", b"last", PERSISTENT)
        assert channel.queue_delete("any.calls").method.message_count == 1
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
            other.channel().queue_declare("any.calls", passive=True)
        assert caught.value.reply_code == 404
    finally:
        other.close()


class FailoverRun:
    """A queue led by node A, a consumer on node C and a confirming publisher on node B (the other two);
    `kill` kills A with -9 (restarted at the end)."""

    def __init__(self, cluster: LocalCluster, queue: str, prefetch: int) -> None:
        self.cluster, self.queue = cluster, queue
        with connect(cluster, 0) as first:
            first.channel().queue_declare(queue, durable=True)
        self.leader = led_by(cluster, [queue])[queue]
        self.victim = index_of(cluster, self.leader)
        consumer_index, publisher_index = [i for i in range(3) if i != self.victim]
        self.consumer_connection = connect(cluster, consumer_index)
        self.publisher_connection = connect(cluster, publisher_index)
        self.channel = self.consumer_connection.channel()
        self.channel.basic_qos(prefetch_count=prefetch)
        self.cancelled: list[Any] = []
        self.channel.add_on_cancel_callback(self.cancelled.append)
        self.publisher = self.publisher_connection.channel()
        self.publisher.confirm_delivery()
        self.confirmed: list[bytes] = []
        self.attempts = 0

    def publish(self, prefix: str) -> None:
        """One publish, its body unique even when an earlier one was nacked (a nacked one may be stored)."""
        self.attempts += 1
        body = f"{prefix} {self.attempts}".encode()
        try:
            self.publisher.basic_publish("", self.queue, body, PERSISTENT)
            self.confirmed.append(body)
        except pika.exceptions.NackError:
            pass

    def pump(self, seconds: float = 0.0) -> None:
        self.consumer_connection.process_data_events(seconds)

    def kill(self) -> None:
        self.cluster.kill_node(self.victim)

    def new_leader(self) -> str:
        found: str = eventually(
            lambda: (leader := queue_leaders(self.cluster).get(self.queue)) != self.leader and leader,
            timeout=20,
        )
        return found

    def close(self) -> None:
        for connection in (self.consumer_connection, self.publisher_connection):
            if connection.is_open:
                connection.close()
        node = self.cluster.nodes[self.victim]
        if node.process is None or node.process.poll() is not None:
            self.cluster.start_node(node)
        self.cluster.wait_node(node)

    def drained(self) -> bool:
        """The queue is empty at its leader, nothing unacked (asked on the consumer's node)."""
        with connect(self.cluster, [i for i in range(3) if i != self.victim][0]) as probe:
            declared = probe.channel().queue_declare(self.queue, passive=True)
            return declared.method.message_count == 0


def test_a_consumer_keeps_its_unacked_tags_when_its_queue_leader_is_killed(cluster: LocalCluster) -> None:
    """Kill -9 of the leader while a consumer on another node holds 10 messages unacked.

    Asserted: the consumer is neither cancelled nor sent anything twice; after the failover it acks the
    10 with the delivery tags it had, and they are gone (the queue drains, nothing comes back); every
    confirmed message, from before the kill and after, is delivered."""
    run = FailoverRun(cluster, "any.failover", prefetch=20)
    got: list[tuple[bytes, bool]] = []
    held: dict[bytes, int] = {}

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append((body, method.redelivered))
        if len(got) > 40 and len(held) < 10:  # the last 10 before the kill are held unacked over it
            held[body] = method.delivery_tag
        else:
            ch.basic_ack(method.delivery_tag)

    run.channel.basic_consume(run.queue, on_message)
    try:
        for _ in range(50):
            run.publish("before")
        assert len(run.confirmed) == 50
        eventually(lambda: run.pump(0.05) or len(got) == 50)
        assert len(held) == 10
        run.kill()
        run.new_leader()
        deadline = time.monotonic() + 20
        while len(run.confirmed) < 100 and time.monotonic() < deadline:
            run.publish("after")
            run.pump()
        assert len(run.confirmed) == 100, "the new leader did not confirm publishes within 20 s"
        for tag in held.values():
            run.channel.basic_ack(tag)
        eventually(lambda: run.pump(0.05) or {body for body, _ in got} >= set(run.confirmed), timeout=20)
        eventually(lambda: run.pump(0.05) or run.drained(), timeout=20)
        run.pump(RESERVE_FOR + 1.0)  # past the new leader's reservation: anything unclaimed would be back
        assert run.cancelled == []
        bodies = [body for body, _ in got]
        assert len(bodies) == len(set(bodies)), "a message was delivered twice"
        assert run.drained()
    finally:
        run.close()


def test_acks_in_flight_at_a_leader_kill_are_not_lost(cluster: LocalCluster) -> None:
    """Kill -9 of the leader just after a consumer on another node acked the 50 messages it held: those
    acks are on their way (to the dead leader, or applied there but not yet replicated) and are handed to
    the new leader, so none of the 50 comes back; then, under a stream of confirmed publishes, every
    delivery is acked at once and nothing acked comes back either. Every confirmed message is delivered;
    the consumer is not cancelled."""
    run = FailoverRun(cluster, "any.failover.acks", prefetch=50)
    got: list[tuple[bytes, bool]] = []
    tags: list[int] = []
    streaming = False

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append((body, method.redelivered))
        if streaming:
            ch.basic_ack(method.delivery_tag)
        else:
            tags.append(method.delivery_tag)

    run.channel.basic_consume(run.queue, on_message)
    try:
        for _ in range(100):
            run.publish("before")
        assert len(run.confirmed) == 100
        eventually(lambda: run.pump(0.05) or len(tags) == 50)
        streaming = True
        for tag in tags:  # each is on the wire before the kill (pika writes an ack at once)
            run.channel.basic_ack(tag)
        run.kill()
        deadline = time.monotonic() + 20
        while len(run.confirmed) < 300 and time.monotonic() < deadline:
            run.publish("after")
            run.pump()
        assert len(run.confirmed) == 300, "the new leader did not confirm publishes within 20 s"
        eventually(lambda: run.pump(0.05) or {body for body, _ in got} >= set(run.confirmed), timeout=20)
        eventually(lambda: run.pump(0.05) or run.drained(), timeout=20)
        run.pump(RESERVE_FOR + 1.0)
        assert run.cancelled == []
        bodies = [body for body, _ in got]
        again = sorted({body for body in bodies if bodies.count(body) > 1})
        assert again == [], f"acked messages came back: {again[:10]}"
    finally:
        run.close()


def test_a_fourth_node_takes_its_share(tmp_path: Path) -> None:
    """A cluster configured with four nodes, three running: the fourth, started, leads the queues it ranks
    first in that are declared from then on, and serves every other queue through the others."""
    with contextmanager(start_cluster)(tmp_path, 4, started=3) as cluster:
        early = [f"any.share.early.{i}" for i in range(8)]
        late = [f"any.share.late.{i}" for i in range(16)]
        a = connect(cluster, 0)
        for queue in early:
            a.channel().queue_declare(queue, durable=True)
        assert "node4" not in led_by(cluster, early).values()
        cluster.start_node(cluster.nodes[3])
        cluster.wait_node(cluster.nodes[3])
        for queue in late:
            a.channel().queue_declare(queue, durable=True)
        leaders = led_by(cluster, late)
        share = sum(1 for queue in late if leaders[queue] == "node4")
        assert 2 <= share <= 8, leaders  # about a quarter of the new queues
        channel = a.channel()
        channel.confirm_delivery()
        for queue in early + late:
            channel.basic_publish("", queue, queue.encode(), PERSISTENT)
        a.close()
        d = connect(cluster, 3)
        try:
            got = consume(d, early + late, len(early + late))
        finally:
            d.close()
        assert sorted(body.decode() for _, body in got) == sorted(early + late)


def test_the_management_api_of_every_node_shows_the_leaders_counts(cluster: LocalCluster) -> None:
    a = connect(cluster, 0)
    try:
        channel = a.channel()
        channel.queue_declare("any.shown", durable=True)
        channel.confirm_delivery()
        for _ in range(7):
            channel.basic_publish("", "any.shown", b"m", PERSISTENT)
        held = a.channel()
        method, _, _ = held.basic_get("any.shown")  # one unacked, held by node1's connection
        assert method is not None
        leader = led_by(cluster, ["any.shown"])["any.shown"]
        for node in cluster.nodes:
            url = f"{node.management_url}api/queues/%2F/any.shown"
            shown = httpx.get(url, auth=("guest", "guest"), timeout=5).json()
            counts = (shown["messages_ready"], shown["messages_unacknowledged"], shown["messages"])
            assert counts == (6, 1, 7), (node.name, shown)
            assert shown["leader"] == leader
            listed = httpx.get(f"{node.management_url}api/queues/%2F", auth=("guest", "guest"), timeout=5)
            assert [q["messages_ready"] for q in listed.json() if q["name"] == "any.shown"] == [6]
        # Publish, get and purge over HTTP on a node that does not lead the queue: done at the leader.
        other = next(node for node in cluster.nodes if node.name != leader)
        api = httpx.Client(base_url=f"{other.management_url}api/", auth=("guest", "guest"), timeout=10)
        message = {"properties": {}, "routing_key": "any.shown", "payload": "x", "payload_encoding": "string"}
        published = api.post("exchanges/%2F/amq.default/publish", json=message)
        assert published.json() == {"routed": True}
        got = api.post("queues/%2F/any.shown/get", json={"count": 2, "ackmode": "ack_requeue_false",
                                                         "encoding": "auto"}).json()
        assert [(m["payload"], m["message_count"]) for m in got] == [("m", 6), ("m", 5)]
        assert api.delete("queues/%2F/any.shown/contents").status_code == 204
        assert channel.queue_declare("any.shown", passive=True).method.message_count == 0
        held.basic_ack(method.delivery_tag)
    finally:
        a.close()
