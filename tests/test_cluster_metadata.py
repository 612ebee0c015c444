"""Cluster metadata without sockets: two nodes' vhosts and an in-memory stand-in for etcd's KV semantics.

The stand-in runs the transactions the hooks build (compare, then one branch) and keeps the event log a
watch would deliver, so a test decides when each node sees what (the real thing: interop/test_cluster.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from leveret.amqp.errors import ChannelError
from leveret.broker.cluster.etcd_ops import Compare, Delete, Get, KeyValue, Put, Txn, TxnResult, WatchEvent
from leveret.broker.cluster.hooks import ClusterPending
from leveret.broker.cluster.keys import KeyLayout
from leveret.broker.cluster.metadata import ClusterMetadata
from leveret.broker.vhost import VirtualHost

LAYOUT = KeyLayout("/leveret/")


class MemoryEtcd:
    def __init__(self) -> None:
        self.revision = 1
        self.data: dict[bytes, KeyValue] = {}
        self.log: list[WatchEvent] = []

    def _matches(self, compare: Compare) -> bool:
        kv = self.data.get(compare.key)
        actual: Any = {
            "CREATE": kv.create_revision if kv else 0,
            "MOD": kv.mod_revision if kv else 0,
            "VALUE": kv.value if kv else b"",
        }[compare.target]
        return {"EQUAL": actual == compare.value, "GREATER": actual > compare.value}[compare.result]

    def _keys(self, key: bytes, end: bytes | None) -> list[bytes]:
        return sorted(k for k in self.data if (k == key if end is None else key <= k < end))

    def txn(self, txn: Txn) -> TxnResult:
        succeeded = all(self._matches(c) for c in txn.compare)
        changed = False
        answers: list[Any] = []
        for op in txn.success if succeeded else txn.failure:
            if isinstance(op, Get):
                answers.append([self.data[k] for k in self._keys(op.key, op.range_end)])
            elif isinstance(op, Put):
                if not changed:
                    self.revision += 1
                    changed = True
                old = self.data.get(op.key)
                kv = KeyValue(op.key, op.value, old.create_revision if old else self.revision, self.revision)
                self.data[op.key] = kv
                self.log.append(WatchEvent("PUT", kv))
                answers.append(None)
            elif isinstance(op, Delete):
                keys = self._keys(op.key, op.range_end)
                if keys and not changed:
                    self.revision += 1
                    changed = True
                for k in keys:
                    del self.data[k]
                    self.log.append(WatchEvent("DELETE", KeyValue(k, b"", 0, self.revision)))
                answers.append(len(keys))
        return TxnResult(succeeded, answers, self.revision)


class FakeNode:
    def __init__(self, name: str, etcd: MemoryEtcd) -> None:
        self.etcd = etcd
        self.vhost = VirtualHost("/")
        self.metadata = ClusterMetadata(LAYOUT, name, lambda vhost, queue, arguments: ["a", "b", "c"])
        self.metadata.vhosts = {"/": self.vhost}
        self.vhost.metadata = self.metadata
        self.seen = 0  # how much of the etcd log this node's watch has delivered

    def do(self, method: Callable[[VirtualHost], Any]) -> Any:
        """What the session does: handle the method; on ClusterPending, run the txn and handle it again."""
        try:
            result = method(self.vhost)
        except ClusterPending as pending:
            change = pending.change
            for _ in range(5):
                self.metadata.completed(change, self.etcd.txn(change.txn))
                with self.metadata.replay(change):
                    try:
                        result = method(self.vhost)
                        break
                    except ClusterPending as again:
                        change = again.change
            else:
                raise AssertionError("no progress") from None
        for change, _ in self.metadata.take_requests():  # fire-and-forget ones (auto-delete)
            self.etcd.txn(change.txn)
        return result

    def watch(self) -> None:
        events, self.seen = self.etcd.log[self.seen :], len(self.etcd.log)
        if events:
            self.metadata.apply(events, self.etcd.revision)
        for change, _ in self.metadata.take_requests():
            self.etcd.txn(change.txn)


def declare_queue(name: str, **options: Any) -> Callable[[VirtualHost], Any]:
    defaults = {"owner": None, "durable": True, "exclusive": False, "auto_delete": False, "arguments": {}}
    return lambda vhost: vhost.declare_queue(name, **{**defaults, **options})


def declare_exchange(name: str, kind: str = "direct", **options: Any) -> Callable[[VirtualHost], Any]:
    defaults = {"durable": True, "auto_delete": False, "internal": False, "arguments": {}}
    return lambda vhost: vhost.declare_exchange(name, kind, **{**defaults, **options})


@pytest.fixture
def nodes() -> tuple[FakeNode, FakeNode, MemoryEtcd]:
    etcd = MemoryEtcd()
    return FakeNode("a", etcd), FakeNode("c", etcd), etcd


def test_the_stored_record_decides_before_the_watch_delivers(
    nodes: tuple[FakeNode, FakeNode, MemoryEtcd],
) -> None:
    a, c, etcd = nodes
    a.do(declare_queue("q", arguments={"x-max-length": 5}))
    record = etcd.data[LAYOUT.queue("/", "q")]
    assert b'"replicas": ["a", "b", "c"]' in record.value and b'"declared_on": "a"' in record.value
    assert "q" not in c.vhost.queues  # C's watch has delivered nothing yet
    with pytest.raises(ChannelError) as caught:
        c.do(declare_queue("q", arguments={"x-max-length": 6}))
    assert caught.value.code == 406
    assert "inequivalent arg 'x-max-length' for queue 'q' in vhost '/'" in caught.value.text
    assert c.vhost.queues["q"].arguments == {"x-max-length": 5}  # the record was applied on C
    c.do(declare_queue("q", arguments={"x-max-length": 5}))
    c.watch()  # the watch's copy of the same put is older than what C applied: skipped
    assert etcd.revision == record.mod_revision  # the redeclares wrote nothing


def test_a_stale_local_copy_gives_way_to_etcd(nodes: tuple[FakeNode, FakeNode, MemoryEtcd]) -> None:
    a, c, _ = nodes
    a.do(declare_exchange("x", "fanout"))
    c.watch()
    assert c.vhost.exchanges["x"].kind == "fanout"
    a.do(lambda vhost: vhost.delete_exchange("x", if_unused=False))
    a.do(declare_exchange("x", "topic"))
    assert "x" not in a.vhost.exchanges or a.vhost.exchanges["x"].kind == "topic"
    # C still holds the fanout one; its redeclare as topic agrees with etcd, and replaces its copy.
    c.do(declare_exchange("x", "topic"))
    assert c.vhost.exchanges["x"].kind == "topic"
    c.watch()
    assert c.vhost.exchanges["x"].kind == "topic"


def test_invalid_arguments_never_reach_etcd(nodes: tuple[FakeNode, FakeNode, MemoryEtcd]) -> None:
    a, _, etcd = nodes
    with pytest.raises(ChannelError) as caught:
        a.do(declare_queue("bad", arguments={"x-max-length": -1}))
    assert caught.value.code == 406
    assert LAYOUT.queue("/", "bad") not in etcd.data


def test_server_named_queues_are_the_clusters(nodes: tuple[FakeNode, FakeNode, MemoryEtcd]) -> None:
    """As in RabbitMQ, a server-named queue's name is known on every node: another node's connections
    get 405 for an exclusive one, as another connection on its own node does, and see a shared one."""
    a, c, etcd = nodes
    owner = object()
    named = a.do(declare_queue("", durable=False, exclusive=True, owner=owner))
    assert named.name.startswith("amq.gen-") and named.exclusive_owner is owner
    assert a.vhost.queues[named.name] is named  # the replay kept the name etcd has
    assert b'"exclusive": true' in etcd.data[LAYOUT.queue("/", named.name)].value
    shared = a.do(declare_queue("", durable=False))
    assert LAYOUT.queue("/", shared.name) in etcd.data
    c.watch()
    with pytest.raises(ChannelError) as caught:
        c.do(lambda v: v.check_exclusive_access(v.queue(named.name), object()))
    assert caught.value.code == 405
    assert c.vhost.queue(shared.name).exclusive_owner is None
    a.do(lambda v: v.remove_queue(v.queues[named.name]))
    c.watch()
    assert named.name not in c.vhost.queues


def test_an_exclusive_queue_is_locked_on_every_node(nodes: tuple[FakeNode, FakeNode, MemoryEtcd]) -> None:
    a, c, etcd = nodes
    owner = object()
    mine = a.do(declare_queue("mine", durable=False, exclusive=True, owner=owner))
    assert mine.exclusive_owner is owner
    assert b'"exclusive": true' in etcd.data[LAYOUT.queue("/", "mine")].value
    # On C, before its watch brought the record, and after: 405, as to another connection on A.
    for attempt in range(2):
        with pytest.raises(ChannelError) as caught:
            c.do(declare_queue("mine", durable=False, exclusive=attempt == 0, owner=object()))
        assert caught.value.code == 405
        assert caught.value.text.startswith("cannot obtain exclusive access to locked queue 'mine'")
        c.watch()
    with pytest.raises(ChannelError) as caught:
        c.do(lambda v: v.check_exclusive_access(v.queue("mine"), object()))
    assert caught.value.code == 405
    # The owner's connection goes: the record goes, and the name is free on every node.
    a.do(lambda v: v.remove_queue(v.queues["mine"]))
    assert LAYOUT.queue("/", "mine") not in etcd.data
    c.watch()
    assert "mine" not in c.vhost.queues
    c.do(declare_queue("mine", durable=False))


def test_bindings_follow_their_ends_incarnation(nodes: tuple[FakeNode, FakeNode, MemoryEtcd]) -> None:
    a, c, etcd = nodes
    a.do(declare_exchange("x"))
    a.do(declare_queue("q"))
    a.do(lambda v: v.bind(v.exchanges["x"], v.queues["q"], "k", {}))
    a.do(lambda v: v.bind(v.exchanges["amq.direct"], v.queues["q"], "k", {}))
    c.watch()
    assert [b.destination.name for b in c.vhost.exchanges["x"].bindings] == ["q"]
    assert [b.destination.name for b in c.vhost.exchanges["amq.direct"].bindings] == ["q"]
    # Deleted and declared again: its bindings are gone everywhere, and stay gone.
    a.do(lambda v: v.delete_queue(v.queues["q"]))
    a.do(declare_queue("q"))
    assert not any(k.startswith(LAYOUT.bindings_of("/", "x")) for k in etcd.data)
    c.watch()
    assert c.vhost.exchanges["x"].bindings == [] and c.vhost.exchanges["amq.direct"].bindings == []
    # A bind from a node whose view of the queue is stale is refused by the compare, then redone.
    stale = c.metadata.kvs[LAYOUT.queue("/", "q")]
    c.metadata.kvs[LAYOUT.queue("/", "q")] = KeyValue(stale.key, stale.value, 1, 1)
    c.do(lambda v: v.bind(v.exchanges["x"], v.queues["q"], "k2", {}))
    a.watch()
    assert [b.routing_key for b in a.vhost.exchanges["x"].bindings] == ["k2"]


def test_unbinding_deletes_an_auto_delete_exchange_cluster_wide(
    nodes: tuple[FakeNode, FakeNode, MemoryEtcd],
) -> None:
    a, c, etcd = nodes
    a.do(declare_exchange("ad", auto_delete=True))
    a.do(declare_queue("q"))
    a.do(lambda v: v.bind(v.exchanges["ad"], v.queues["q"], "k", {}))
    c.watch()
    a.do(lambda v: v.unbind(v.exchanges["ad"], v.queues["q"], "k", {}))
    assert "ad" not in a.vhost.exchanges
    assert LAYOUT.exchange("/", "ad") not in etcd.data
    c.watch()
    assert "ad" not in c.vhost.exchanges


def test_a_snapshot_replaces_everything(nodes: tuple[FakeNode, FakeNode, MemoryEtcd]) -> None:
    a, c, etcd = nodes
    c.vhost.metadata.applying = True  # as if recovered from C's own disk before it joined
    c.vhost.declare_queue("old", owner=None, durable=True, exclusive=False, auto_delete=False, arguments={})
    c.vhost.metadata.applying = False
    a.do(declare_queue("new"))
    a.do(declare_exchange("x"))
    a.do(lambda v: v.bind(v.exchanges["x"], v.queues["new"], "k", {}))
    c.metadata.reset(list(etcd.data.values()), etcd.revision)
    assert "old" not in c.vhost.queues and "new" in c.vhost.queues
    assert [b.destination.name for b in c.vhost.exchanges["x"].bindings] == ["new"]


def test_only_the_declaring_node_expires_a_queue_for_the_cluster(
    nodes: tuple[FakeNode, FakeNode, MemoryEtcd],
) -> None:
    a, c, etcd = nodes
    a.do(declare_queue("exp", durable=False, arguments={"x-expires": 1000}))
    c.watch()
    key = LAYOUT.queue("/", "exp")
    # C's own idle instance expires: it goes on C only, and comes back when a method names it.
    c.do(lambda v: v.remove_queue(v.queues["exp"]))
    assert "exp" not in c.vhost.queues and key in etcd.data
    assert c.do(lambda v: v.queue("exp")).name == "exp"
    # A's expires: the queue goes everywhere.
    a.do(lambda v: v.remove_queue(v.queues["exp"]))
    assert key not in etcd.data
    c.watch()
    assert "exp" not in c.vhost.queues


def test_binding_an_end_known_only_locally_asks_etcd_first(
    nodes: tuple[FakeNode, FakeNode, MemoryEtcd],
) -> None:
    a, c, etcd = nodes
    a.do(declare_exchange("x"))
    a.do(declare_queue("q"))
    c.watch()
    del c.metadata.kvs[LAYOUT.queue("/", "q")]  # held here, its record forgotten
    c.do(lambda v: v.bind(v.exchanges["x"], v.queues["q"], "k", {}))
    [binding] = [kv for key, kv in etcd.data.items() if key.startswith(LAYOUT.bindings_of("/", "x"))]
    assert b'"destination_revision": 0' not in binding.value
    a.watch()
    assert [b.routing_key for b in a.vhost.exchanges["x"].bindings] == ["k"]


def test_exclusive_records_are_claimed_again_with_a_new_lease(
    nodes: tuple[FakeNode, FakeNode, MemoryEtcd],
) -> None:
    a, c, etcd = nodes
    a.do(declare_queue("mine", durable=False, exclusive=True, owner=object()))
    a.do(declare_queue("", exclusive=True, owner=object()))  # server-named: claimed as well
    c.watch()
    key = LAYOUT.queue("/", "mine")
    del etcd.data[key]  # the old lease expired: etcd deleted the record
    etcd.revision += 1
    etcd.log.append(WatchEvent("DELETE", KeyValue(key, b"", 0, etcd.revision)))
    c.watch()
    assert "mine" not in c.vhost.queues
    a.metadata.lease = 42
    claims = a.metadata.exclusive_claims()
    assert [claim.success[0].lease for claim in claims] == [42, 42]  # type: ignore[union-attr]
    for claim in claims:
        etcd.txn(claim)
    c.watch()
    with pytest.raises(ChannelError) as caught:
        c.do(declare_queue("mine", durable=False))
    assert caught.value.code == 405
