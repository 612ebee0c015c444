"""Placement of queues over nodes, and the membership view: pure, no etcd."""

from collections import Counter

import pytest

from leveret.broker.cluster.etcd_ops import KeyValue, Put, WatchEvent
from leveret.broker.cluster.hooks import LOCAL_METADATA, ClusterPending
from leveret.broker.cluster.keys import KeyLayout
from leveret.broker.cluster.membership import Membership
from leveret.broker.cluster.placement import leader_of, replica_set
from leveret.broker.cluster.records import QueueRecord
from leveret.broker.cluster.state import ClusterState
from leveret.broker.node import Node
from leveret.broker.vhost import VirtualHost
from leveret.config import Cluster, ClusterNode, Config, Etcd

NODES = ["rabbit1", "rabbit2", "rabbit3"]
QUEUES = [("/", f"q{i}") for i in range(3000)]


def test_leaders_spread_evenly() -> None:
    leaders = Counter(leader_of(vhost, name, NODES) for vhost, name in QUEUES)
    assert set(leaders) == set(NODES)
    for count in leaders.values():
        assert abs(count - 1000) < 100, leaders


def test_replica_sets_are_distinct_nodes_leader_first() -> None:
    for vhost, name in QUEUES[:500]:
        replicas = replica_set(vhost, name, NODES, 3)
        assert sorted(replicas) == sorted(NODES)
        assert replicas[0] == leader_of(vhost, name, NODES)
        two = replica_set(vhost, name, NODES, 2)
        assert two == replicas[:2]
    assert replica_set("/", "q", NODES, 5) == replica_set("/", "q", NODES, 3)  # capped at the node count
    assert replica_set("/", "q", ["solo"], 3) == ["solo"]


def test_the_same_answer_whatever_the_order_of_nodes() -> None:
    for vhost, name in QUEUES[:200]:
        assert replica_set(vhost, name, NODES, 2) == replica_set(vhost, name, list(reversed(NODES)), 2)


def test_identity_is_vhost_and_name() -> None:
    assert len({tuple(replica_set(v, "q", NODES, 3)) for v in ("a", "b", "c", "d", "e", "f", "g")}) > 1
    # No ambiguity between where the vhost ends and the name begins.
    pairs = [(f"v{i}/x", "y") for i in range(50)]
    assert [replica_set(v, n, NODES, 3) for v, n in pairs] != [
        replica_set(v[:-2], "x/" + n, NODES, 3) for v, n in pairs
    ]


def test_adding_a_node_moves_only_its_share() -> None:
    bigger = [*NODES, "rabbit4"]
    before = {q: leader_of(*q, NODES) for q in QUEUES}
    after = {q: leader_of(*q, bigger) for q in QUEUES}
    moved = [q for q in QUEUES if before[q] != after[q]]
    assert all(after[q] == "rabbit4" for q in moved)  # nothing moves between the old nodes
    assert 0.2 < len(moved) / len(QUEUES) < 0.3  # about 1/4
    # Replica sets: a queue's set changes only by the new node taking one place.
    for q in QUEUES[:500]:
        old, new = set(replica_set(*q, NODES, 2)), set(replica_set(*q, bigger, 2))
        assert new == old or (len(new - old) == 1 and new - old == {"rabbit4"})


def test_removing_a_node_moves_only_its_queues() -> None:
    smaller = NODES[:2]
    for q in QUEUES[:1000]:
        before = leader_of(*q, NODES)
        if before != "rabbit3":
            assert leader_of(*q, smaller) == before


def _kv(layout: KeyLayout, name: str, revision: int) -> KeyValue:
    return KeyValue(layout.node(name), b"{}", revision, revision)


def test_membership_view_follows_the_node_keys() -> None:
    layout = KeyLayout("/leveret/")
    membership = Membership(layout, NODES)
    changes: list[tuple[str, bool]] = []
    membership.on_change = lambda name, alive: changes.append((name, alive))
    membership.reset([_kv(layout, "rabbit2", 5), _kv(layout, "rabbit1", 4)], 6)
    assert membership.alive_nodes() == ["rabbit1", "rabbit2"]
    membership.apply([WatchEvent("PUT", _kv(layout, "rabbit3", 7))], 7)
    membership.apply([WatchEvent("DELETE", _kv(layout, "rabbit1", 8))], 8)
    assert membership.alive_nodes() == ["rabbit2", "rabbit3"]
    assert not membership.is_alive("rabbit1") and membership.revision == 8
    membership.reset([_kv(layout, "rabbit1", 9)], 9)  # after compaction: the whole range again
    assert membership.alive_nodes() == ["rabbit1"]
    assert changes == [
        ("rabbit1", True),
        ("rabbit2", True),
        ("rabbit3", True),
        ("rabbit1", False),
        ("rabbit2", False),
        ("rabbit3", False),
        ("rabbit1", True),
    ]


def test_key_layout_keeps_names_apart() -> None:
    layout = KeyLayout("/leveret/")
    assert layout.queue("/", "a/b") == b"/leveret/meta/%2F/queue/a%2Fb"
    assert layout.parse_meta(layout.queue("/", "a/b")) == ("/", "queue", "a/b")
    assert layout.parse_meta(layout.binding("v", "ex/1", "abc")) == ("v", "binding", "ex/1")
    assert layout.node_name(layout.node("n/1")) == "n/1"
    assert layout.parse_meta(b"/leveret/nodes/x") is None


def test_a_single_node_has_no_cluster_at_all() -> None:
    single = Node(Config())
    assert single.cluster is None
    assert all(vhost.metadata is LOCAL_METADATA for vhost in single.vhosts.values())
    nodes = (ClusterNode("a", "127.0.0.1:5701", "127.0.0.1:25701"),)
    clustered = Node(Config(cluster=Cluster(nodes, Etcd(("http://127.0.0.1:2379",)), node="a")))
    assert clustered.cluster is not None
    assert all(vhost.metadata is clustered.cluster.metadata for vhost in clustered.vhosts.values())
    assert clustered.cluster.replica_set("/", "q", {}) == ["a"]  # replication factor 3, capped at one node


def _three_node_state(name: str) -> ClusterState:
    nodes = tuple(
        ClusterNode(n, f"127.0.0.1:{5701 + i}", f"127.0.0.1:{25701 + i}") for i, n in enumerate(NODES)
    )
    return ClusterState(Cluster(nodes, Etcd(("http://127.0.0.1:2379",)), node=name))


def test_a_quorum_queues_initial_group_size_replaces_the_replication_factor() -> None:
    state = _three_node_state("rabbit1")
    quorum = {"x-queue-type": "quorum"}
    for vhost, name in QUEUES[:200]:
        full = state.replica_set(vhost, name, quorum)
        assert len(full) == 3  # no group size: the replication factor (3)
        assert state.replica_set(vhost, name, {**quorum, "x-quorum-initial-group-size": 2}) == full[:2]
        assert state.replica_set(vhost, name, {**quorum, "x-quorum-initial-group-size": 1}) == full[:1]
        assert state.replica_set(vhost, name, {**quorum, "x-quorum-initial-group-size": 7}) == full  # capped
    # Only a quorum queue's valid value counts (the declare refuses the others with 406 anyway).
    for value in (0, -1, "2", True, 2.0):
        assert len(state.replica_set("/", "q", {**quorum, "x-quorum-initial-group-size": value})) == 3
    assert len(state.replica_set("/", "q", {"x-quorum-initial-group-size": 1})) == 3


def test_the_declared_record_holds_the_group_sized_replica_set() -> None:
    state = _three_node_state("rabbit2")
    vhost = VirtualHost("/")
    vhost.metadata = state.metadata
    arguments = {"x-queue-type": "quorum", "x-quorum-initial-group-size": 2}
    with pytest.raises(ClusterPending) as pending:
        vhost.declare_queue(
            "q", owner=None, durable=True, exclusive=False, auto_delete=False, arguments=arguments
        )
    (put,) = pending.value.change.txn.success
    assert isinstance(put, Put)
    record = QueueRecord.decode(put.value)
    assert record.replicas == tuple(replica_set("/", "q", NODES, 2)) and len(record.replicas) == 2
