"""The fault suite (issue 10, Proof): each fault under confirmed load from pika and amqplib clients
connected to several nodes, then the checker's verdict (interop/checker): faults / confirmed / lost /
phantom / duplicates, printed (and appended to $LEVERET_FAULTS_REPORT).

Run: `make faults` (or `pytest -m slow -s interop/test_cluster_faults.py`).

The Leveret cluster tests need messages to cross nodes (replication and any-node connect). Each checks
that capability first (`messages_cross_nodes`: declare on node1, publish on node2, get on node3); where it
is missing the test still runs its fault and load, prints the verdict, and ends as xfail naming the
capability, so the figures show what the checker caught rather than a silent pass. The single-node crash
loop and the RabbitMQ cluster prove the instruments: both must report nothing lost.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from interop.brokers import LeveretBroker
from interop.checker.verdict import Verdict
from interop.faults.cluster import FaultCluster, messages_cross_nodes
from interop.faults.load import Load
from interop.faults.netns import NamespacedCluster, netns_available
from interop.faults.report import report
from leveret.broker.server.local_cluster import etcd_binary
from leveret.config import Cluster

pytestmark = pytest.mark.slow

# The clusters run with the default cluster.lease_ttl; the faults are timed by it.
LEASE_TTL = Cluster.__dataclass_fields__["lease_ttl"].default
QUEUES = 3
WARMUP = 300  # confirms before the fault
PROGRESS = 300  # more confirms after it, before the load stops
NO_CROSSING = (
    "messages do not cross nodes on this tree (capability probe: declared on node1, published on node2, "
    "not delivered from node3): needs issue 10's replication and any-node connect"
)


def queues(name: str) -> list[str]:
    return [f"faults-{name}-{i}-{time.monotonic_ns() % 10**8}" for i in range(QUEUES)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FaultCluster]:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    started = FaultCluster(tmp_path / "cluster", 3)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def under_load(
    name: str,
    cluster: FaultCluster,
    fault: Callable[[FaultCluster, Load, list[str]], None],
    directory: Path,
    *,
    max_per_publisher: int | None = None,
    progress_timeout: float = 90.0,
) -> Verdict:
    """Load on every node, the fault, more confirms, the drain, the verdict; xfail without crossing."""
    crossing = messages_cross_nodes(cluster)
    names = queues(name)
    load = Load(directory / "load", cluster.urls, names, max_per_publisher=max_per_publisher).start()
    try:
        load.wait_confirmed(WARMUP, timeout=60)
        fault(cluster, load, names)
        load.wait_confirmed(load.confirmed_so_far() + PROGRESS, timeout=progress_timeout)
        verdict = load.finish()
    except AssertionError as error:
        if crossing:
            raise
        pytest.xfail(f"{NO_CROSSING}; the run itself failed: {str(error)[:500]}")
    finally:
        load.stop()
    if not crossing:
        report(name, verdict, "xfail: no crossing")
        pytest.xfail(f"{NO_CROSSING}; verdict: {verdict.summary()}")
    report(name, verdict)
    assert verdict.ok, verdict.problems()
    assert verdict.faults > 0 and verdict.confirmed > WARMUP
    return verdict


def url_of(cluster: FaultCluster, name: str) -> str:
    return cluster.url(cluster.node(name))


def test_kill_leader(cluster: FaultCluster, tmp_path: Path) -> None:
    """Also asserted: no ack is lost by a consumer on another node than the killed one (the new leader
    takes over what it held and the acks it sent; see broker/cluster/remote.py). A consumer connected to
    the killed node loses its connection, and with it the acks on their way: RabbitMQ's quorum queues
    lose those too, so they stay excused (acks_lost_in_fault)."""
    def fault(cluster: FaultCluster, load: Load, names: list[str]) -> None:
        leader = cluster.wait_leader(names[0])
        load.fault("kill -9", leader, role="leader", url=url_of(cluster, leader))
        cluster.kill(leader)  # stays down: the survivors must hold every confirmed message
        load.failover(names[0], cluster.wait_failover(names[0], other_than=leader))

    verdict = under_load("kill -9 of the leader", cluster, fault, tmp_path)
    assert verdict.acks_lost_elsewhere == 0, verdict.summary()


def test_kill_follower(cluster: FaultCluster, tmp_path: Path) -> None:
    def fault(cluster: FaultCluster, load: Load, names: list[str]) -> None:
        leader = cluster.wait_leader(names[0])
        follower = next(node.name for node in cluster.nodes if node.name != leader)
        load.fault("kill -9", follower, role="follower", url=url_of(cluster, follower))
        cluster.kill(follower)

    under_load("kill -9 of a follower", cluster, fault, tmp_path)


def test_kill_random_node_in_a_loop(cluster: FaultCluster, tmp_path: Path) -> None:
    """Asserted as for the leader's kill: no ack lost by a consumer connected elsewhere than the node
    just killed."""
    chance = random.Random()
    seed = chance.randrange(10**6)
    chance.seed(seed)
    print(f"kill loop seed {seed}")

    def fault(cluster: FaultCluster, load: Load, names: list[str]) -> None:
        for _ in range(20):
            victim = chance.choice(cluster.nodes).name
            load.fault("kill -9", victim, url=url_of(cluster, victim))
            cluster.kill(victim)
            time.sleep(chance.uniform(0.2, 1.5))
            cluster.restart(victim)
            load.wait_confirmed(load.confirmed_so_far() + 50, timeout=60)

    verdict = under_load("kill -9 of a random node, 20 times", cluster, fault, tmp_path, progress_timeout=120)
    assert verdict.acks_lost_elsewhere == 0, verdict.summary()


def test_sigstop_of_the_leader_past_its_lease(cluster: FaultCluster, tmp_path: Path) -> None:
    """A stale leader that confirmed, once awake, what it held alone would show in the verdict as lost
    (the new epoch's log has no such entry); the etcd key shows it does not count itself leader."""
    def fault(cluster: FaultCluster, load: Load, names: list[str]) -> None:
        leader = cluster.wait_leader(names[0])
        load.fault("SIGSTOP", leader, role="leader", url=url_of(cluster, leader))
        cluster.pause(leader)
        load.failover(names[0], cluster.wait_failover(names[0], other_than=leader, timeout=LEASE_TTL * 5))
        time.sleep(LEASE_TTL)  # well past the lease: a stale leader that woke now would confirm
        load.fault("SIGCONT", leader)
        cluster.resume(leader)
        assert cluster.leader_of(names[0]) != leader

    under_load("SIGSTOP of the leader past its lease", cluster, fault, tmp_path)


def test_partition_of_the_leaders_peer_links(cluster: FaultCluster, tmp_path: Path) -> None:
    """Also asserted: no ack is lost. Every node stays alive and the leader keeps its lease; the leader
    keeps what the nodes it is cut from held until their claims come over the healed links (see
    broker/cluster/remote.py), with the acks their clients sent meanwhile."""
    def fault(cluster: FaultCluster, load: Load, names: list[str]) -> None:
        leader = cluster.wait_leader(names[0])
        load.fault("peer links dropped", leader)
        for proxy in cluster.peer_links_of(leader):
            proxy.drop()
        time.sleep(LEASE_TTL * 3)
        load.fault("peer links healed", leader)
        cluster.heal()

    verdict = under_load("partition of the leader's peer links (proxy)", cluster, fault, tmp_path)
    assert verdict.acks_lost_elsewhere == 0, verdict.summary()


def test_partition_of_the_leader_from_etcd(cluster: FaultCluster, tmp_path: Path) -> None:
    def fault(cluster: FaultCluster, load: Load, names: list[str]) -> None:
        leader = cluster.wait_leader(names[0])
        load.fault("etcd links dropped", leader)
        for proxy in cluster.etcd_proxies:
            proxy.drop(client=leader)
        load.failover(names[0], cluster.wait_failover(names[0], other_than=leader, timeout=LEASE_TTL * 5))
        time.sleep(LEASE_TTL)
        load.fault("etcd links healed", leader)
        cluster.heal()

    under_load("partition of the leader from etcd (proxy)", cluster, fault, tmp_path)


def test_rolling_restart(cluster: FaultCluster, tmp_path: Path) -> None:
    def fault(cluster: FaultCluster, load: Load, names: list[str]) -> None:
        for node in cluster.nodes:
            load.fault("restart", node.name)
            cluster.terminate(node.name)
            cluster.restart(node.name)
            load.wait_confirmed(load.confirmed_so_far() + 100, timeout=60)

    under_load("rolling restart", cluster, fault, tmp_path)


def test_loss_of_one_etcd_member(cluster: FaultCluster, tmp_path: Path) -> None:
    def fault(cluster: FaultCluster, load: Load, names: list[str]) -> None:
        load.fault("kill -9 etcd member", "etcd0")  # the member every node talks to first
        cluster.etcd.kill(0)
        load.wait_confirmed(load.confirmed_so_far() + 200, timeout=60)
        time.sleep(LEASE_TTL * 2)  # past a lease: keepalives must have moved to another member
        load.fault("etcd member back", "etcd0")
        cluster.etcd.restart(0)

    under_load("loss of one etcd member", cluster, fault, tmp_path)


def test_node_returning_after_100k_messages(cluster: FaultCluster, tmp_path: Path) -> None:
    def fault(cluster: FaultCluster, load: Load, names: list[str]) -> None:
        leader = cluster.wait_leader(names[0])
        away = next(node.name for node in cluster.nodes if node.name != leader)
        load.fault("kill -9", away, role="follower")
        cluster.kill(away)
        load.wait_confirmed(load.confirmed_so_far() + 100_000, timeout=900)
        load.fault("return", away)
        cluster.restart(away)

    under_load("a node returning after 100,000 messages", cluster, fault, tmp_path, progress_timeout=120)


def test_nftables_partition_in_a_network_namespace(tmp_path: Path) -> None:
    why_not = netns_available() or (None if etcd_binary() else "etcd is not installed")
    if why_not:
        pytest.skip(why_not)
    namespaced = NamespacedCluster(tmp_path / "cluster", 3)
    try:
        namespaced.start()

        def fault(cluster: FaultCluster, load: Load, names: list[str]) -> None:
            inside = namespaced.inside.name
            load.fault("nftables DROP", inside)
            namespaced.netns.drop()
            time.sleep(LEASE_TTL * 3)
            load.fault("nftables healed", inside)
            namespaced.netns.heal()

        under_load("nftables DROP of a node in a network namespace", namespaced, fault, tmp_path)
    finally:
        namespaced.stop()


def test_single_node_kill_loop_loses_nothing(tmp_path: Path) -> None:
    """The instruments on what must hold today: one Leveret node, durable quorum queues, kill -9 x 20."""
    broker = LeveretBroker(tmp_path / "broker")
    broker.start()
    load = Load(tmp_path / "load", [broker.url], queues("single")).start()
    try:
        load.wait_confirmed(WARMUP, timeout=60)
        for _ in range(20):
            load.fault("kill -9", "leveret", url=broker.url)
            broker.kill()
            broker.start()
            load.wait_confirmed(load.confirmed_so_far() + 50, timeout=60)
        verdict = load.finish()
    finally:
        load.stop()
        broker.close()
    report("single node, kill -9 x 20", verdict)
    assert verdict.ok, verdict.problems()
    assert verdict.faults == 20 and verdict.confirmed > WARMUP


def test_rabbitmq_cluster_kill_of_a_node(tmp_path: Path) -> None:
    """The instruments on the reference: RabbitMQ 3-node cluster, quorum queues, kill -9 of the leader
    node of one queue (kept down through the drain), then of another node after the first is back. A
    consumer on a node that stays up loses no ack (what Leveret's kill tests assert too)."""
    from interop.brokers import rabbitmq_server_script
    from interop.rabbitmq_cluster import RabbitMQCluster

    if rabbitmq_server_script() is None:
        pytest.skip("rabbitmq-server is not installed")
    rabbit = RabbitMQCluster(tmp_path / "rabbitmq", 3).start()
    names = queues("rabbitmq")
    load = Load(tmp_path / "load", rabbit.urls, names).start()
    try:
        load.wait_confirmed(WARMUP, timeout=120)
        leader = rabbit.leader_of(names[0])
        load.fault("kill -9", rabbit.nodes[leader].nodename, role="leader", url=rabbit.urls[leader])
        rabbit.kill(leader)
        load.wait_confirmed(load.confirmed_so_far() + PROGRESS, timeout=120)
        rabbit.restart(leader)
        other = (leader + 1) % 3
        load.fault("kill -9", rabbit.nodes[other].nodename, url=rabbit.urls[other])
        rabbit.kill(other)
        load.wait_confirmed(load.confirmed_so_far() + PROGRESS, timeout=120)
        verdict = load.finish()
    finally:
        load.stop()
        rabbit.stop()
    report("RabbitMQ 3.10 cluster, quorum queues, kill -9 of the leader then another node", verdict)
    assert verdict.ok, verdict.problems()
    assert verdict.acks_lost_elsewhere == 0, verdict.summary()  # the reference for the Leveret tests
    assert verdict.faults == 2 and verdict.confirmed > WARMUP
