"""What a client sees while part of the cluster is out of reach (issue 10). Leveret only.

A consumer cut off from its queue's leader for longer than `cluster.consumer_cancel_delay`: the consumer is
connected to one node; the replicated queue is led by another, which stays alive and in etcd. The peer link
between the two nodes is cut (the fault proxy resets it and refuses new connections). Asserted, with pika:
the consumer gets basic.cancel (consumer cancel notification) once the delay has passed without a reachable
leader, not before; its connection and channel stay open; once the link is back the client consumes again
on the same channel and gets what was published meanwhile. RabbitMQ's quorum queues keep such a consumer
registered and resume it when the partition heals; Leveret cancels it instead (docs/ARCHITECTURE.md,
"Consumers across a leader change"): a client told nothing would wait on a queue it cannot reach.

A purge on the leader's node while the queue's majority is out of reach (both followers SIGSTOPped for a
moment): purge-ok waits until the log holds the purge as a confirm would, so that a new leader cannot
bring the purged messages back; it comes, with the count, once the followers run again. Before, it came
at once. A purge through a follower's node is answered with the leader's count.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from pamqp.commands import Queue

from interop.cluster_support import eventually
from interop.conftest import BROKER_KIND
from interop.faults.cluster import FaultCluster, started_fault_cluster
from interop.rawclient import RawClient

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="starts Leveret nodes of its own")

CANCEL_DELAY = 3.0
QUEUE = "cut.consumer"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    yield from started_fault_cluster(
        tmp_path_factory.mktemp("cut"), proxy_etcd=False, settings={"consumer_cancel_delay": CANCEL_DELAY}
    )


def connect(cluster: FaultCluster, index: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(cluster.nodes[index].amqp_url))


def publish(cluster: FaultCluster, index: int, bodies: list[str], queue: str = QUEUE) -> None:
    with contextlib.closing(connect(cluster, index)) as publisher:
        channel = publisher.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", queue, body.encode(), pika.BasicProperties(delivery_mode=2))


def test_a_consumer_cut_from_its_leader_past_the_delay_is_cancelled(cluster: FaultCluster) -> None:
    with contextlib.closing(connect(cluster, 0)) as first:
        first.channel().queue_declare(QUEUE, durable=True)
    leader = cluster.wait_leader(QUEUE)
    index = cluster.index(leader)
    elsewhere = next(i for i in range(3) if i != index)
    publish(cluster, index, ["before"])
    consumer = connect(cluster, elsewhere)
    try:
        channel = consumer.channel()
        cancelled: list[Any] = []
        channel.add_on_cancel_callback(cancelled.append)
        got: list[bytes] = []

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            got.append(body)
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(QUEUE, on_message)
        eventually(lambda: consumer.process_data_events(0.05) or got == [b"before"])
        link = cluster.peer_proxies[tuple(sorted((leader, cluster.nodes[elsewhere].name)))]
        link.cut()
        cut_at = time.monotonic()
        publish(cluster, index, ["during"])  # on the leader's side of the cut
        eventually(lambda: consumer.process_data_events(0.05) or cancelled, timeout=CANCEL_DELAY + 15)
        took = time.monotonic() - cut_at
        assert took >= CANCEL_DELAY - 0.2, f"cancelled {took:.1f} s after the cut"
        assert got == [b"before"]
        assert consumer.is_open and channel.is_open
        cluster.heal()
        channel.basic_consume(QUEUE, on_message)  # the same channel, once a leader is reachable again
        eventually(lambda: consumer.process_data_events(0.05) or got == [b"before", b"during"], timeout=20)
        print(f"basic.cancel {took:.1f} s after the cut (consumer_cancel_delay {CANCEL_DELAY} s)")
    finally:
        cluster.heal()
        if consumer.is_open:
            consumer.close()


def purge_while_paused(cluster: FaultCluster, index: int, queue: str, paused: list[str]) -> int:
    """queue.purge from a client of node `index` while the `paused` nodes are stopped: asserts that no
    purge-ok comes meanwhile; returns its message count once they run again."""
    client = RawClient("127.0.0.1", cluster.nodes[index].amqp_port)
    try:
        for name in paused:
            cluster.pause(name)
        try:
            client.send(1, Queue.Purge(queue=queue))
            client.sock.settimeout(1.0)
            with pytest.raises(socket.timeout):
                answer = client.receive()
                raise AssertionError(f"answered with the majority stopped: {answer!r}")
        finally:
            for name in paused:
                cluster.resume(name)
        client.sock.settimeout(15)
        return int(client.expect(Queue.PurgeOk).message_count)
    finally:
        client.close()


def test_a_purge_is_answered_once_a_majority_holds_it(cluster: FaultCluster) -> None:
    queue = "purge.replicated"
    with contextlib.closing(connect(cluster, 0)) as first:
        first.channel().queue_declare(queue, durable=True)
    leader = cluster.wait_leader(queue)
    followers = [node.name for node in cluster.nodes if node.name != leader]
    publish(cluster, 0, [f"m{i}" for i in range(5)], queue)
    assert purge_while_paused(cluster, cluster.index(leader), queue, followers) == 5
    publish(cluster, 0, ["a", "b"], queue)
    # Through a node that does not lead it (every node holds a replica here, so the call's own link
    # carries the replication: nothing to stop in between, tests/test_cluster_remote.py shows the wait).
    with contextlib.closing(connect(cluster, cluster.index(followers[0]))) as through:
        assert through.channel().queue_purge(queue).method.message_count == 2
    with contextlib.closing(connect(cluster, 0)) as check:
        assert check.channel().queue_declare(queue, passive=True).method.message_count == 0
