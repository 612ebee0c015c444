"""Cluster metadata timings on a local cluster (3 etcd members, 3 Leveret nodes on loopback):

- declare: a queue.declare answered by node 1 (one etcd transaction), as pika sees it;
- propagation: from declare-ok on node 1 to the first publish on node 3 that routes to the queue (node 3's
  watch has applied the record; the publish never asks etcd), polled with mandatory publishes and confirms.

    python -m bench.cluster_metadata            # 200 declares, 50 propagation rounds
    python -m bench.cluster_metadata 500 100

Figures include pika's own round trips (~0.2-0.5 ms each on this machine).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import pika
import pika.exceptions

from leveret.broker.server.local_cluster import LocalCluster


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


def show(label: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(
        f"{label}: n={len(ms)} p50 {statistics.median(ms):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms, "
        f"max {max(ms):.2f} ms"
    )


def main(declares: int = 200, rounds: int = 50) -> None:
    with tempfile.TemporaryDirectory(prefix="leveret-bench-cluster-") as directory:
        cluster = LocalCluster(Path(directory), 3, log_level="warning").start()
        try:
            first = pika.BlockingConnection(pika.URLParameters(cluster.nodes[0].amqp_url))
            third = pika.BlockingConnection(pika.URLParameters(cluster.nodes[2].amqp_url))
            on_first, on_third = first.channel(), third.channel()
            on_third.confirm_delivery()
            latencies = []
            for i in range(declares):
                started = time.perf_counter()
                on_first.queue_declare(f"bench.declare.{i}")
                latencies.append(time.perf_counter() - started)
            show("queue.declare on node1", latencies)
            delays = []
            for i in range(rounds):
                name = f"bench.propagate.{i}"
                on_first.queue_declare(name)
                declared = time.perf_counter()
                while True:
                    try:
                        on_third.basic_publish("", name, b"x", mandatory=True)
                        break
                    except pika.exceptions.UnroutableError:
                        continue
                delays.append(time.perf_counter() - declared)
            show("declare-ok on node1 -> routable on node3", delays)
            first.close()
            third.close()
        finally:
            cluster.stop()


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:3]))
