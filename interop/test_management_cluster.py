"""Management writes in a cluster (3 etcd members, 3 Leveret nodes with management listeners): a change
made over HTTP on one node goes through etcd as the same AMQP method would, so the other nodes see it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pika
import pika.exceptions
import pytest

from interop.clients import wait_until
from interop.cluster_support import start_cluster
from interop.conftest import BROKER_KIND
from leveret.broker.server.local_cluster import LocalCluster

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="starts Leveret nodes of its own")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from start_cluster(tmp_path_factory.mktemp("management-cluster"), management=True)


def api(cluster: LocalCluster, index: int) -> httpx.Client:
    url = cluster.nodes[index].management_url
    assert url is not None
    return httpx.Client(base_url=url, auth=("guest", "guest"), timeout=10, headers={"connection": "close"})


def queue_on(cluster: LocalCluster, index: int, name: str) -> int | None:
    """None when a passive declare on node `index` finds the queue, else its reply code."""
    with pika.BlockingConnection(pika.URLParameters(cluster.nodes[index].amqp_url)) as connection:
        try:
            connection.channel().queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as closed:
            return closed.reply_code
    return None


def test_http_declares_and_deletes_are_seen_on_the_other_nodes(cluster: LocalCluster) -> None:
    with api(cluster, 0) as a, api(cluster, 1) as b:
        assert a.put("/api/exchanges/%2F/http.x", json={"type": "topic", "durable": True}).status_code == 201
        assert a.put("/api/queues/%2F/http.q", json={"durable": True}).status_code == 201
        assert a.post("/api/bindings/%2F/e/http.x/q/http.q", json={"routing_key": "a.*"}).status_code == 201
        # Other nodes learn a change from their etcd watch, a few milliseconds later.
        wait_until(lambda: queue_on(cluster, 1, "http.q") is None and queue_on(cluster, 2, "http.q") is None)
        # The stored definition holds on the other nodes: an inequivalent redeclare is refused there.
        refused = b.put("/api/queues/%2F/http.q", json={"durable": False})
        assert refused.status_code == 400 and "inequivalent arg 'durable'" in refused.json()["reason"]
        assert b.delete("/api/queues/%2F/http.q").status_code == 204
        wait_until(lambda: queue_on(cluster, 0, "http.q") == 404 and queue_on(cluster, 2, "http.q") == 404)
        assert b.delete("/api/exchanges/%2F/http.x").status_code == 204
        wait_until(lambda: a.get("/api/exchanges/%2F/http.x").status_code == 404)
