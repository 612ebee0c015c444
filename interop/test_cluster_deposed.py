"""A leader deposed while alive, with a consumer on its own node holding unacked messages (issue 10).

The queue's leader is SIGSTOPped past its lease, or cut from etcd (the fault proxy stalls its etcd links),
then resumed or healed: another node leads the queue by then. The consumer, connected to the deposed
node, holds HELD deliveries over the change; once its node knows it is deposed, it acks half of them by
the delivery tags it had, then takes the rest of the queue acking each delivery at once, and acks the
other half at the end. Asserted, with pika: the consumer is not cancelled (it follows the new leader);
no message it acked after the change is ever delivered again; every confirmed message is delivered; each
held message is either still held and ackable (its ack removes it) or delivered again with
redelivered=true; in the end the new leader holds nothing, ready or unacked, past its reservation for
claims. Leveret only.

Before the fix the held deliveries stayed on the deposed leader's old queue object, whose acks no
replica ever saw: the new leader gave the acked messages out again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pika
import pytest

from interop.cluster_support import eventually
from interop.conftest import BROKER_KIND
from interop.faults.cluster import FaultCluster, started_fault_cluster
from leveret.broker.cluster.remote import RESERVE_FOR
from leveret.config import Cluster

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="starts Leveret nodes of its own")

LEASE_TTL = Cluster.__dataclass_fields__["lease_ttl"].default
HELD = 20
TOTAL = 60
PERSISTENT = pika.BasicProperties(delivery_mode=2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    yield from started_fault_cluster(tmp_path_factory.mktemp("deposed"), management=True)


def connect(cluster: FaultCluster, index: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(cluster.nodes[index].amqp_url))


def counts(cluster: FaultCluster, index: int, queue: str) -> tuple[int, int]:
    """(ready, unacked) of `queue`, as node `index`'s management API shows them (the leader's)."""
    url = f"{cluster.nodes[index].management_url}api/queues/%2F/{queue}"
    found = httpx.get(url, auth=("guest", "guest"), timeout=5).json()
    return found.get("messages_ready", -1), found.get("messages_unacknowledged", -1)


def pause_past_the_lease(cluster: FaultCluster, leader: str, queue: str) -> None:
    cluster.pause(leader)
    try:
        cluster.wait_leader(queue, timeout=LEASE_TTL * 5, other_than=leader)
        time.sleep(1.0)  # well past its lease
    finally:
        cluster.resume(leader)


def cut_from_etcd(cluster: FaultCluster, leader: str, queue: str) -> None:
    """Its etcd links stall (the proxy holds their bytes, as a partitioned network would: a `drop`
    would take whole watch events out of the middle of a TCP stream, which no network does)."""
    for proxy in cluster.etcd_proxies:
        proxy.pause(client=leader)
    try:
        cluster.wait_leader(queue, timeout=LEASE_TTL * 5, other_than=leader)
        time.sleep(1.0)
    finally:
        cluster.heal()


def held_over_a_deposition(
    cluster: FaultCluster, fault: Callable[[FaultCluster, str, str], None], queue: str
) -> None:
    with contextlib.closing(connect(cluster, 0)) as first:
        first.channel().queue_declare(queue, durable=True)
    leader = cluster.wait_leader(queue)
    index = cluster.index(leader)
    elsewhere = next(i for i in range(3) if i != index)
    with contextlib.closing(connect(cluster, elsewhere)) as publisher:
        channel = publisher.channel()
        channel.confirm_delivery()
        for i in range(TOTAL):
            channel.basic_publish("", queue, f"m{i}".encode(), PERSISTENT)  # raises if nacked
    consumer = connect(cluster, index)  # on the leader's own node
    channel = consumer.channel()
    channel.basic_qos(prefetch_count=HELD)
    cancelled: list[Any] = []
    channel.add_on_cancel_callback(cancelled.append)
    got: list[tuple[bytes, bool]] = []
    held: dict[bytes, int] = {}
    acked_at: dict[bytes, int] = {}  # body -> how many deliveries had come when the client acked it
    streaming = False

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append((body, method.redelivered))
        if streaming:
            ch.basic_ack(method.delivery_tag)
            acked_at.setdefault(body, len(got))
        else:
            held[body] = method.delivery_tag

    channel.basic_consume(queue, on_message)
    try:
        eventually(lambda: consumer.process_data_events(0.05) or len(held) == HELD)
        fault(cluster, leader, queue)
        log = cluster.nodes[index].log_path
        eventually(lambda: f"no longer leader of queue '{queue}'" in log.read_text(), timeout=20)
        assert cluster.leader_of(queue) != leader
        bodies = list(held)
        first_half, second_half = bodies[: HELD // 2], bodies[HELD // 2:]
        for body in first_half:  # acked with the tags it had, after the change
            channel.basic_ack(held[body])
            acked_at[body] = len(got)
        streaming = True
        eventually(lambda: consumer.process_data_events(0.05) or {b for b, _ in got} >= {
            f"m{i}".encode() for i in range(TOTAL)}, timeout=30)
        for body in second_half:
            if body not in acked_at:  # still held, not delivered again meanwhile: ackable
                channel.basic_ack(held[body])
                acked_at[body] = len(got)
        new_index = cluster.index(cluster.leader_of(queue) or leader)
        eventually(lambda: consumer.process_data_events(0.05) or counts(cluster, new_index, queue) == (0, 0),
                   timeout=20)
        consumer.process_data_events(RESERVE_FOR + 1.0)  # anything set aside and unclaimed would be back
        assert cancelled == []
        came_back = sorted({body for position, (body, _) in enumerate(got, 1)
                            if body in acked_at and position > acked_at[body]})
        assert came_back == [], f"acked after the leader change, delivered again: {came_back}"
        again = [(body, redelivered) for body, redelivered in got[HELD:] if body in held]
        assert all(redelivered for _, redelivered in again), again
        assert counts(cluster, new_index, queue) == (0, 0)
        print(f"held {HELD} over the deposition: {HELD - len(again)} kept under their tags, "
              f"{len(again)} delivered again; {len(got)} deliveries of {TOTAL} messages")
    finally:
        if consumer.is_open:
            consumer.close()


def test_a_consumer_on_a_leader_paused_past_its_lease_keeps_what_it_held(cluster: FaultCluster) -> None:
    held_over_a_deposition(cluster, pause_past_the_lease, "deposed.paused")


def test_a_consumer_on_a_leader_cut_from_etcd_keeps_what_it_held(cluster: FaultCluster) -> None:
    held_over_a_deposition(cluster, cut_from_etcd, "deposed.cut")
