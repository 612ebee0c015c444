"""A replicated queue larger than memory on a real cluster (3 etcd members, 3 Leveret nodes, a 4 MiB
message memory budget): a confirmed backlog of twelve times the budget leaves every node's resident
memory bounded (followers keep messages in their replica files, the leader's queue pages out like a local
one), and after kill -9 of the leader the new one serves all of it, in order, without reading the whole
backlog into memory at its election. Leveret only (the budget is Leveret's setting).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest

from interop.backlog import MIB, vm_rss
from interop.cluster_support import start_cluster
from interop.conftest import BROKER_KIND
from interop.test_cluster_replication import QUEUE, declared_and_led, new_leader
from leveret.broker.server.local_cluster import LocalCluster

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="message_memory_budget is Leveret's")

BUDGET = "4MiB"
SIZE = 8 * 1024
COUNT = 6000  # 47 MiB of bodies: about twelve times the budget
WINDOW = 200  # publishes awaiting their confirms at once
# Over a node's RSS before the backlog: the budget, the replica tail's bodies (an eighth of it), a batch
# or two in flight, and what the allocator keeps. Holding the backlog would take its 47 MiB at least.
HEADROOM = 28 * MIB


@pytest.fixture
def cluster(tmp_path: Any) -> Iterator[LocalCluster]:
    yield from start_cluster(tmp_path, memory_budget=BUDGET)


def body(number: int) -> bytes:
    return b"%08d" % number + b"x" * (SIZE - 8)


async def publish_confirmed(url: str, count: int) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for start in range(0, count, WINDOW):
            await asyncio.gather(*(
                channel.default_exchange.publish(
                    aio_pika.Message(body(n), delivery_mode=aio_pika.DeliveryMode.PERSISTENT), QUEUE)
                for n in range(start, min(start + WINDOW, count))
            ))
    finally:
        await connection.close()


async def consume_all(url: str, count: int) -> list[tuple[int, bool]]:
    """(number, redelivered) of every message, acked, in delivery order."""
    got: list[tuple[int, bool]] = []
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=500)
        queue = await channel.declare_queue(QUEUE, passive=True)
        async with queue.iterator() as messages:
            async for message in messages:
                got.append((int(message.body[:8]), message.redelivered))
                await message.ack()
                if len(got) == count:
                    break
    finally:
        await connection.close()
    return got


def rss(cluster: LocalCluster, index: int) -> int:
    process = cluster.nodes[index].process
    assert process is not None
    return vm_rss(process.pid)


def settles_within(cluster: LocalCluster, index: int, baseline: int, seconds: float = 25.0) -> int:
    """The node's RSS growth over `baseline`, waited for (up to `seconds`: freed memory goes back to
    the system at the node's next malloc_trim, every 10 s) to come under HEADROOM; the last seen."""
    deadline = time.monotonic() + seconds
    while True:
        growth = rss(cluster, index) - baseline
        if growth < HEADROOM or time.monotonic() > deadline:
            return growth
        time.sleep(0.25)


def test_a_replicated_backlog_over_budget_keeps_every_node_bounded_and_survives_kill_9(
    cluster: LocalCluster,
) -> None:
    index, epoch = declared_and_led(cluster)
    baseline = [rss(cluster, i) for i in range(3)]
    asyncio.run(publish_confirmed(cluster.nodes[index].amqp_url, COUNT))
    growth = [settles_within(cluster, i, baseline[i]) for i in range(3)]
    roles = ["leader" if i == index else "follower" for i in range(3)]
    print(f"\nRSS growth after {COUNT} x {SIZE // 1024} KiB confirmed (budget {BUDGET}), MiB: "
          + ", ".join(f"{role} {g / MIB:.1f}" for role, g in zip(roles, growth, strict=True)))
    for i in range(3):
        assert growth[i] < HEADROOM, f"node{i + 1} grew {growth[i] / MIB:.0f} MiB for 47 MiB of messages"
    cluster.kill_node(index)
    successor = new_leader(cluster, index, epoch)
    # Elected with the whole backlog: its queue holds what the budget allows, the rest stays on disk.
    elected = rss(cluster, successor) - baseline[successor]
    assert elected < HEADROOM, f"the new leader grew {elected / MIB:.0f} MiB at its election"
    got = asyncio.run(consume_all(cluster.nodes[successor].amqp_url, COUNT))
    assert [number for number, _ in got] == list(range(COUNT))  # every confirmed one, once, in order
    assert all(redelivered for _, redelivered in got)  # a leader change: all may have been delivered
