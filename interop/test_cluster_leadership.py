"""Per-queue leadership on a real cluster (3 etcd members, 3 Leveret nodes): spread, failover after
kill -9, epochs fencing a stale leader's ISR change, and a SIGSTOPped leader deposed while it slept.
Leveret only."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pika
import pytest

from interop.cluster_support import start_cluster
from interop.conftest import BROKER_KIND
from leveret.broker.cluster.etcd_ops import Get, KeyValue, range_result, txn_result
from leveret.broker.cluster.keys import KeyLayout
from leveret.broker.cluster.leadership import isr_change_txn, isr_members, leader_node
from leveret.broker.server.local_cluster import LocalCluster

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="starts Leveret nodes of its own")

LAYOUT = KeyLayout("/leveret/")
QUEUES = [f"lead.q{i}" for i in range(12)]


@pytest.fixture
def cluster(tmp_path: Any) -> Iterator[LocalCluster]:
    yield from start_cluster(tmp_path, management=True)


def etcd_range(cluster: LocalCluster, prefix: bytes) -> dict[str, KeyValue]:
    body = Get.prefix(prefix).to_json()
    for url in cluster.etcd.endpoints:
        try:
            answer = httpx.post(f"{url}/v3/kv/range", json=body, timeout=2).json()
        except httpx.HTTPError:
            continue
        return {kv.key.decode().rsplit("/", 1)[1]: kv for kv in range_result(answer).kvs}
    raise AssertionError("no etcd member answered")


def leaders(cluster: LocalCluster) -> dict[str, tuple[str, int]]:
    """queue -> (leader, epoch), from etcd."""
    return {q: (leader_node(kv), kv.create_revision) for q, kv in etcd_range(cluster, LAYOUT.leaders).items()}


def in_sync(cluster: LocalCluster) -> dict[str, tuple[str, ...]]:
    return {q: isr_members(kv) for q, kv in etcd_range(cluster, LAYOUT.in_sync).items()}


def eventually(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return value


def declare(cluster: LocalCluster, names: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(cluster.nodes[0].amqp_url))
    channel = connection.channel()
    for name in names:
        channel.queue_declare(name, durable=True)
    channel.queue_declare("lead.transient")  # not durable: local, no leader
    connection.close()


def queue_record(cluster: LocalCluster, index: int, name: str) -> dict[str, Any]:
    url = f"{cluster.nodes[index].management_url}api/queues/%2F/{name}"
    return httpx.get(url, auth=("guest", "guest"), timeout=5).json()


def test_leaders_spread_fail_over_with_a_higher_epoch_and_fence_the_old_one(cluster: LocalCluster) -> None:
    declare(cluster, QUEUES)
    before = eventually(lambda: (found := leaders(cluster)).keys() >= set(QUEUES) and found)
    assert "lead.transient" not in before
    assert {node for node, _ in before.values()} == {"node1", "node2", "node3"}  # spread
    records = etcd_range(cluster, b"/leveret/meta/%2F/queue/")
    for name, (node, _) in before.items():
        assert node == json.loads(records[name].value)["replicas"][0]  # placement's first replica
    assert all(sorted(members) == ["node1", "node2", "node3"] for members in in_sync(cluster).values())
    shown = queue_record(cluster, 1, QUEUES[0])
    assert shown["leader"] == shown["node"] == before[QUEUES[0]][0]
    assert sorted(shown["members"]) == sorted(shown["online"]) == ["node1", "node2", "node3"]
    def all_linked() -> list[dict[str, Any]] | None:
        # A dialer retries with a backoff of up to 1 s: the last node started may be a moment behind.
        found = httpx.get(f"{cluster.nodes[1].management_url}api/nodes", auth=("guest", "guest")).json()
        links = [link["up"] for entry in found for link in entry.get("cluster_links", [{"up": False}])]
        return found if len(links) == 6 and all(links) else None

    nodes = eventually(all_linked, timeout=10)
    assert [(n["name"], n["running"]) for n in nodes] == [("node1", True), ("node2", True), ("node3", True)]
    for entry in nodes:  # each live node's own figures, the others' asked over the peer links
        assert entry["uptime"] > 0 and entry["mem_used"] > 0 and int(entry["os_pid"]) > 0
        links = {link["name"]: link["up"] for link in entry["cluster_links"]}
        assert links == {n: True for n in ("node1", "node2", "node3") if n != entry["name"]}
    assert len({entry["os_pid"] for entry in nodes}) == 3

    victim = before[QUEUES[0]][0]
    index = int(victim[-1]) - 1
    survivor = (index + 1) % 3
    orphans = [q for q, (node, _) in before.items() if node == victim]
    cluster.kill_node(index)
    killed = time.monotonic()

    def taken_over() -> dict[str, tuple[str, int]] | None:
        now = leaders(cluster)
        return now if all(q in now and now[q][0] != victim for q in orphans) else None

    after = eventually(taken_over, timeout=10)
    failover = time.monotonic() - killed
    print(f"failover of {len(orphans)} queues after kill -9 of {victim}: {failover:.2f} s")
    assert failover < 4.0  # lease_ttl 2 s, etcd's expiry scan (every 0.5 s), a txn, this test's polling
    for q in orphans:
        assert after[q][1] > before[q][1]  # a higher epoch
    for q, (node, epoch) in before.items():
        if node != victim:
            assert after[q] == (node, epoch)  # the others kept their leaders
    isr = eventually(lambda: all(victim not in m for m in in_sync(cluster).values()) and in_sync(cluster))
    assert all(len(members) == 2 for members in isr.values())
    # The deposed leader's ISR change, guarded by its old epoch, is refused by etcd.
    stale = isr_change_txn(LAYOUT, ("/", orphans[0]), before[orphans[0]][1], ["node1", "node2", "node3"])
    answer = httpx.post(f"{cluster.etcd.endpoints[0]}/v3/kv/txn", json=stale.to_json(), timeout=2).json()
    assert not txn_result(stale, answer).succeeded
    assert victim not in in_sync(cluster)[orphans[0]]
    shown = queue_record(cluster, survivor, orphans[0])
    assert shown["leader"] == after[orphans[0]][0] and victim not in shown["online"]
    nodes = httpx.get(f"{cluster.nodes[survivor].management_url}api/nodes", auth=("guest", "guest")).json()
    dead = next(n for n in nodes if n["name"] == victim)
    assert dead == {"name": victim, "type": "disc", "running": False}


def test_a_paused_leader_is_deposed_and_knows_it_before_acting(cluster: LocalCluster) -> None:
    declare(cluster, QUEUES[:6])
    before = eventually(lambda: (found := leaders(cluster)).keys() >= set(QUEUES[:6]) and found)
    name = QUEUES[0]
    victim, epoch = before[name]
    index = int(victim[-1]) - 1
    process = cluster.nodes[index].process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        after = eventually(lambda: (now := leaders(cluster)).get(name, (victim, 0))[0] != victim and now,
                           timeout=10)
        time.sleep(1.0)  # paused well past its lease (2 s)
    finally:
        process.send_signal(signal.SIGCONT)
    new_leader, new_epoch = after[name]
    assert new_epoch > epoch
    # From its first answer on, the resumed node never calls itself the leader.
    seen = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            seen.append(queue_record(cluster, index, name)["leader"])
        except httpx.HTTPError:
            continue
    assert seen and victim not in seen
    assert seen[-1] == new_leader
    assert leaders(cluster)[name] == (new_leader, new_epoch)  # it did not campaign back
    log = cluster.nodes[index].log_path.read_text()
    assert f"no longer leader of queue '{name}' in vhost '/' (epoch {epoch})" in log


def test_a_node_back_after_kill_9_relinks_and_does_not_take_leadership_back(cluster: LocalCluster) -> None:
    declare(cluster, QUEUES[:6])
    before = eventually(lambda: (found := leaders(cluster)).keys() >= set(QUEUES[:6]) and found)
    victim = before[QUEUES[0]][0]
    index = int(victim[-1]) - 1
    cluster.kill_node(index)
    eventually(lambda: all(node != victim for node, _ in leaders(cluster).values()), timeout=10)
    eventually(lambda: all(victim not in m for m in in_sync(cluster).values()))
    after = leaders(cluster)
    cluster.start_node(cluster.nodes[index])
    cluster.wait_node(cluster.nodes[index])

    def relinked() -> bool:
        url = f"{cluster.nodes[index].management_url}api/nodes"
        found = httpx.get(url, auth=("guest", "guest"), timeout=5).json()
        # A node's links are listed once its stats came over a link; until then it has not relinked.
        return all(
            entry["running"] and all(link["up"] for link in entry.get("cluster_links", [{"up": False}]))
            for entry in found
        )

    eventually(relinked, timeout=10)
    time.sleep(0.5)
    assert leaders(cluster) == after  # out of the ISR: it waits for replication to catch it up
    assert queue_record(cluster, index, QUEUES[0])["leader"] == after[QUEUES[0]][0]
