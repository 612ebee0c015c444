"""A local cluster for tests: 3 etcd members and 3 Leveret nodes on loopback, or a skip saying why not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from leveret.broker.server.local_cluster import LocalCluster, etcd_binary


def start_cluster(
    directory: Path, size: int = 3, *, management: bool = False, replica_log_entries: int | None = None
) -> Iterator[LocalCluster]:
    """Yields the running cluster; every process it started is stopped afterwards."""
    if etcd_binary() is None:
        pytest.skip(
            "etcd is not installed (Debian: apt-get install etcd-server; `make deps` does it as root)"
        )
    cluster = LocalCluster(directory, size, management=management, replica_log_entries=replica_log_entries)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
