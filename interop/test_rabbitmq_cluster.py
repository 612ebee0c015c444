"""The private 3-node RabbitMQ cluster (interop/rabbitmq_cluster.py) that the cluster benchmarks and fault
checkers compare Leveret with: it forms, a quorum queue has 3 members, and a killed node comes back.

RabbitMQ only, whatever LEVERET_INTEROP_BROKER says: it tests the reference's harness, not Leveret.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest

from interop.brokers import rabbitmq_server_script
from interop.rabbitmq_cluster import RabbitMQCluster, node_name

pytestmark = pytest.mark.skipif(rabbitmq_server_script() is None, reason="rabbitmq-server is not installed")

QUORUM = {"x-queue-type": "quorum"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQCluster]:
    with RabbitMQCluster(Path(tmp_path_factory.mktemp("rabbitmq-cluster")), 3) as started:
        yield started


def publish_confirmed(url: str, queue: str, body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        connection.close()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_nodes_form_one_cluster_with_private_names(cluster: RabbitMQCluster) -> None:
    assert cluster.running_nodes(via=2) == {node_name(i) for i in range(3)}
    assert len({node.port for node in cluster.nodes}) == 3
    assert len({node.dist_port for node in cluster.nodes} | {cluster.epmd_port}) == 4


def test_a_quorum_queue_has_three_members_and_survives_its_leaders_kill(cluster: RabbitMQCluster) -> None:
    queue = f"cluster-smoke-{time.monotonic_ns()}"
    connection = pika.BlockingConnection(pika.URLParameters(cluster.nodes[1].url))
    connection.channel().queue_declare(queue, durable=True, arguments=QUORUM)
    connection.close()
    record = cluster.queue(queue)
    assert record["type"] == "quorum"
    assert sorted(record["members"]) == sorted(node_name(i) for i in range(3))
    leader = cluster.leader_of(queue)
    publish_confirmed(cluster.nodes[leader].url, queue, b"before")

    cluster.kill(leader)
    survivor = (leader + 1) % 3
    # Published while the queue has no leader, RabbitMQ nacks: the test waits for the election first.
    wait_for(lambda: cluster.queue(queue, via=survivor).get("leader") not in (None, node_name(leader)))
    publish_confirmed(cluster.nodes[survivor].url, queue, b"after")  # confirmed by the 2 left

    cluster.restart(leader)
    wait_for(lambda: sorted(cluster.queue(queue).get("online", [])) == sorted(record["members"]))
    connection = pika.BlockingConnection(pika.URLParameters(cluster.nodes[leader].url))
    channel = connection.channel()
    bodies = [channel.basic_get(queue, auto_ack=True)[2] for _ in range(2)]
    channel.queue_delete(queue)
    connection.close()
    assert bodies == [b"before", b"after"]
