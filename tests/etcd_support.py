"""A real 3-member etcd cluster on loopback for tests, or a skip saying why there can be none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from leveret.broker.server.local_cluster import EtcdCluster, etcd_binary


def etcd_cluster(directory: Path, size: int = 3) -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        pytest.skip(
            "etcd is not installed (Debian: apt-get install etcd-server; `make deps` does it as root)"
        )
    cluster = EtcdCluster(directory, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
