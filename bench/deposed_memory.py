"""RSS of a leader deposed while alive whose own client holds a few deliveries of a large backlog.

3 etcd members and 3 nodes (interop/faults' cluster); a durable queue gets `--count` confirmed messages of
`--size` bytes; a consumer connected to the queue's leader holds 10 of them unacked; the leader is
SIGSTOPped past its lease (another node leads by then) and resumed. Printed: the leader's RSS with the
backlog, 10 s after it knows it is deposed (the backlog is the new leader's now: a deposed node that
still held its old queue object would keep it in memory), and 10 s after the client acked and closed.

    python -m bench.deposed_memory [--count 6000] [--size 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import pika

from interop.faults.cluster import FaultCluster

QUEUE = "deposed.memory"
HELD = 10


def rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def connect(cluster: FaultCluster, index: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(cluster.nodes[index].amqp_url))


def run(cluster: FaultCluster, count: int, size: int) -> str:
    with contextlib.closing(connect(cluster, 0)) as first:
        first.channel().queue_declare(QUEUE, durable=True)
    leader = cluster.wait_leader(QUEUE)
    index = cluster.index(leader)
    with contextlib.closing(connect(cluster, next(i for i in range(3) if i != index))) as publisher:
        channel = publisher.channel()
        channel.confirm_delivery()
        for _ in range(count):
            channel.basic_publish("", QUEUE, b"x" * size, pika.BasicProperties(delivery_mode=2))
    consumer = connect(cluster, index)
    channel = consumer.channel()
    channel.basic_qos(prefetch_count=HELD)
    tags: list[int] = []
    channel.basic_consume(QUEUE, lambda ch, method, properties, body: tags.append(method.delivery_tag))
    while len(tags) < HELD:
        consumer.process_data_events(0.1)
    process = cluster.nodes[index].process
    assert process is not None
    time.sleep(3)
    before = rss_mib(process.pid)
    cluster.pause(leader)
    try:
        cluster.wait_leader(QUEUE, timeout=15, other_than=leader)
        time.sleep(1)
    finally:
        cluster.resume(leader)
    log = cluster.nodes[index].log_path
    while f"no longer leader of queue '{QUEUE}'" not in log.read_text():
        time.sleep(0.1)
    for _ in range(40):
        consumer.process_data_events(0.25)
    deposed = rss_mib(process.pid)
    for tag in tags:
        channel.basic_ack(tag)
    consumer.close()
    time.sleep(10)
    closed = rss_mib(process.pid)
    return (f"leader {leader} RSS MiB: with the backlog {before}, 10 s after its deposition {deposed}, "
            f"after the client's acks and close {closed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--size", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="deposed-memory-") as directory:
        cluster = FaultCluster(Path(directory), 3, management=True)
        cluster.start()
        try:
            print(run(cluster, args.count, args.size))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
