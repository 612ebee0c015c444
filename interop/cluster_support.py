"""A local cluster for tests: 3 etcd members and 3 Leveret nodes on loopback, or a skip saying why not."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from leveret.broker.cluster.etcd_ops import Get, range_result
from leveret.broker.cluster.keys import KeyLayout
from leveret.broker.cluster.leadership import leader_node
from leveret.broker.server.local_cluster import LocalCluster, etcd_binary


def start_cluster(
    directory: Path,
    size: int = 3,
    *,
    management: bool = False,
    started: int | None = None,
    replica_log_entries: int | None = None,
    load_definitions: Path | None = None,
    memory_budget: str | None = None,
) -> Iterator[LocalCluster]:
    """Yields the running cluster (`started` of its nodes running, default all); every process it started
    is stopped afterwards."""
    if etcd_binary() is None:
        pytest.skip(
            "etcd is not installed (Debian: apt-get install etcd-server; `make deps` does it as root)"
        )
    cluster = LocalCluster(
        directory,
        size,
        management=management,
        started=started,
        replica_log_entries=replica_log_entries,
        load_definitions=load_definitions,
        memory_budget=memory_budget,
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def eventually(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Wait for `condition` to give something true; that value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(interval)
    return value


def queue_leaders(cluster: LocalCluster, prefix: str = "/leveret/") -> dict[str, str]:
    """Each replicated queue of vhost / -> the node whose leader key etcd holds."""
    layout = KeyLayout(prefix)
    body = Get.prefix(layout.leaders).to_json()
    for url in cluster.etcd.endpoints:
        try:
            answer = httpx.post(f"{url}/v3/kv/range", json=body, timeout=2).json()
        except httpx.HTTPError:
            continue
        found = {}
        for kv in range_result(answer).kvs:
            queue = layout.queue_of(kv.key)
            if queue is not None and queue[0] == "/":
                found[queue[1]] = leader_node(kv)
        return found
    raise AssertionError("no etcd member answered")
