"""A cluster of one node (1 etcd member): its replicated queues work as a 3-node cluster's do, with no peer
at all. Leveret only (RabbitMQ has no etcd cluster file): bench.cluster_scaling starts here.

It once died on its first queue.declare: the declare asked the queue's leader before the node knew it was
the leader, and the calls' task group had closed for want of peers to send to.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from leveret.broker.server.local_cluster import LocalCluster, etcd_binary

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason="etcd is not installed (etcd-server)")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    started = LocalCluster(tmp_path, 1, log_level="warning").start()
    try:
        yield started
    finally:
        started.stop()


def test_a_one_node_cluster_declares_routes_and_delivers(cluster: LocalCluster) -> None:
    node = cluster.nodes[0]
    queues = [f"single-{i}" for i in range(3)]
    with pika.BlockingConnection(pika.URLParameters(node.amqp_url)) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.exchange_declare("single-hash", exchange_type="x-consistent-hash", durable=True)
        for queue in queues:
            channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_bind(queue, "single-hash", routing_key="1")
        for key in range(300):
            channel.basic_publish("single-hash", str(key), b"m", pika.BasicProperties(delivery_mode=2))
        counts = [channel.queue_declare(queue, passive=True).method.message_count for queue in queues]
    assert sum(counts) == 300 and min(counts) > 0
    assert node.process is not None and node.process.poll() is None
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(timeout=20) == 0
