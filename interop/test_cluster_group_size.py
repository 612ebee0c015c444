"""A quorum queue's `x-quorum-initial-group-size` on a real cluster (3 etcd members, 3 Leveret nodes): the
queue gets that many members instead of the replication factor (3), its leader is one of them, and
confirmed publishing and consuming work through every node with a 2- and a 1-member replica set.
Leveret only (interop/test_rabbitmq_cluster.py shows the same member counts on RabbitMQ's cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pika
import pytest

from interop.cluster_support import eventually, queue_leaders, start_cluster
from interop.conftest import BROKER_KIND
from leveret.broker.server.local_cluster import LocalCluster

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="starts Leveret nodes of its own")

NODES = ["node1", "node2", "node3"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from start_cluster(tmp_path_factory.mktemp("group-size"), management=True)


def shown(cluster: LocalCluster, index: int, name: str) -> dict[str, Any]:
    url = f"{cluster.nodes[index].management_url}api/queues/%2F/{name}"
    return httpx.get(url, auth=("guest", "guest"), timeout=5).json()


def led_by_a_member(cluster: LocalCluster, name: str) -> dict[str, Any] | None:
    """The queue's record on node1 once it has a leader (every node agrees on it, from etcd)."""
    record = shown(cluster, 0, name)
    leader = queue_leaders(cluster).get(name)
    return record if leader is not None and record.get("leader") == leader else None


@pytest.mark.parametrize("size", [2, 1])
def test_the_initial_group_size_sets_the_members(cluster: LocalCluster, size: int) -> None:
    name = f"group.{size}"
    arguments = {"x-queue-type": "quorum", "x-quorum-initial-group-size": size}
    with pika.BlockingConnection(pika.URLParameters(cluster.nodes[2].amqp_url)) as connection:
        connection.channel().queue_declare(name, durable=True, arguments=arguments)
    record = eventually(lambda: led_by_a_member(cluster, name))
    members = record["members"]
    assert len(members) == size and set(members) <= set(NODES)
    assert record["leader"] == members[0] and sorted(record["online"]) == sorted(members)
    for index in (1, 2):  # every node shows the same replica set, from the same etcd record
        assert shown(cluster, index, name)["members"] == members

    # Confirmed publishes from every node, members or not: each confirm needs a majority of the members
    # (both of two, the leader alone of one).
    for index, node in enumerate(cluster.nodes):
        with pika.BlockingConnection(pika.URLParameters(node.amqp_url)) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            for n in range(5):
                body = f"{index}.{n}".encode()
                # pika raises on a nack or an unroutable message: returning means confirmed.
                channel.basic_publish("", name, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    outsider = next((i for i, node in enumerate(NODES) if node not in members), 0)
    with pika.BlockingConnection(pika.URLParameters(cluster.nodes[outsider].amqp_url)) as connection:
        channel = connection.channel()
        got = []
        while len(got) < 15:
            method, _, body = channel.basic_get(name, auto_ack=True)
            if method is None:
                break
            got.append(body.decode())
    assert got == [f"{i}.{n}" for i in range(3) for n in range(5)]
