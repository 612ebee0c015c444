"""A local cluster (3 etcd members, 3 Leveret nodes on loopback) driven by real clients.

Leveret only: a RabbitMQ cluster is not started here (the behaviours checked are single-node RabbitMQ's,
observed through several nodes).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from interop.conftest import BROKER_KIND
from leveret.broker.server.local_cluster import LocalCluster, etcd_binary

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="starts Leveret nodes of its own")


def start_cluster(directory: Path) -> Iterator[LocalCluster]:
    if etcd_binary() is None:
        pytest.skip(
            "etcd is not installed (Debian: apt-get install etcd-server; `make deps` does it as root)"
        )
    cluster = LocalCluster(directory, 3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


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
    cluster.kill_node(2)  # kill -9: no revoke, the lease runs out (lease_ttl 3 s)
    killed = time.monotonic()
    try:
        eventually(lambda: registered_nodes(cluster) == ["node1", "node2"], timeout=8)
        assert time.monotonic() - killed > 1.5
    finally:
        cluster.start_node(cluster.nodes[2])
        cluster.wait_node(cluster.nodes[2])
    assert registered_nodes(cluster) == ["node1", "node2", "node3"]
