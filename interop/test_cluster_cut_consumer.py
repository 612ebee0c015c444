"""A consumer cut off from its queue's leader for longer than `cluster.consumer_cancel_delay` (issue 10).

The consumer is connected to one node; the replicated queue is led by another, which stays alive and in
etcd. The peer link between the two nodes is cut (the fault proxy resets it and refuses new connections).
Asserted, with pika: the consumer gets basic.cancel (consumer cancel notification) once the delay has
passed without a reachable leader, not before; its connection and channel stay open; once the link is
back the client consumes again on the same channel and gets what was published meanwhile. Leveret only.

RabbitMQ's quorum queues keep such a consumer registered and resume it when the partition heals; Leveret
cancels it instead (docs/ARCHITECTURE.md, "Consumers across a leader change"), as RabbitMQ's classic
mirrored queues did: a client told nothing would wait for ever on a queue it cannot reach.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from interop.cluster_support import eventually
from interop.conftest import BROKER_KIND
from interop.faults.cluster import FaultCluster
from leveret.broker.server.local_cluster import etcd_binary

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="starts Leveret nodes of its own")

CANCEL_DELAY = 3.0
QUEUE = "cut.consumer"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    started = FaultCluster(
        tmp_path_factory.mktemp("cut"), 3, proxy_etcd=False,
        settings={"consumer_cancel_delay": CANCEL_DELAY},
    )
    try:
        started.start()
        yield started
    finally:
        started.stop()


def connect(cluster: FaultCluster, index: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(cluster.nodes[index].amqp_url))


def publish(cluster: FaultCluster, index: int, bodies: list[str]) -> None:
    with contextlib.closing(connect(cluster, index)) as publisher:
        channel = publisher.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", QUEUE, body.encode(), pika.BasicProperties(delivery_mode=2))


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
