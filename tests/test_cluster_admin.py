"""Users, vhosts, permissions, limits and policies as cluster metadata, without sockets: two real Nodes of
one cluster file and the in-memory etcd of test_cluster_metadata.py, whose event log stands in for the
watch (the real thing: interop/test_cluster_admin.py)."""

from __future__ import annotations

import json
from pathlib import Path

from leveret.broker.cluster.admin_sync import (
    MAX_TXN_OPS,
    AdminView,
    admin_records,
    change_txns,
    seed_txns,
)
from leveret.broker.cluster.etcd_ops import Delete, Put
from leveret.broker.cluster.keys import KeyLayout
from leveret.broker.node import Node
from leveret.config import load_config
from leveret.config.passwords import hash_password
from tests.test_cluster_metadata import MemoryEtcd

LAYOUT = KeyLayout("/leveret/")
CLUSTER = """
cluster:
  nodes:
    - {name: a, amqp: "127.0.0.1:5701", peer: "127.0.0.1:25701"}
    - {name: b, amqp: "127.0.0.1:5702", peer: "127.0.0.1:25702"}
  etcd:
    endpoints: ["http://127.0.0.1:2379"]
"""


class Member:
    """A node, its admin view, and how far it has read the etcd log."""

    def __init__(self, tmp_path: Path, name: str, etcd: MemoryEtcd) -> None:
        path = tmp_path / "cluster.yaml"
        path.write_text(CLUSTER, encoding="utf-8")
        config = load_config(path, overrides={"cluster.node": name, "data_dir": str(tmp_path / name)})
        self.node = Node(config)
        assert self.node.cluster is not None
        self.view: AdminView = self.node.cluster.admin
        self.etcd = etcd
        self.seen = 0

    def start(self) -> None:
        """Seed what the file defines where etcd lacks it, then read the range (a watch's reset)."""
        for txn in seed_txns(self.view.seed()):
            self.etcd.txn(txn)
        self.view.reset(list(self.etcd.data.values()), self.etcd.revision)
        self.seen = len(self.etcd.log)

    def change(self, operation: object) -> None:
        """What the management API does: change here, send the difference, record etcd's answer."""
        before = self.view.records()
        assert callable(operation)
        operation()
        change = self.view.change(before, self.view.records())
        assert change is not None
        revisions = [self.etcd.txn(txn).revision for txn in change.txns]
        self.view.completed(change, revisions)

    def watch(self) -> None:
        events = self.etcd.log[self.seen :]
        self.seen = len(self.etcd.log)
        if events:
            self.view.apply(events, self.etcd.revision)


def two(tmp_path: Path) -> tuple[Member, Member, MemoryEtcd]:
    etcd = MemoryEtcd()
    a, b = Member(tmp_path, "a", etcd), Member(tmp_path, "b", etcd)
    a.start()
    b.start()
    return a, b, etcd


def test_the_file_seeds_etcd_and_etcd_wins_over_it_at_the_next_start(tmp_path: Path) -> None:
    a, b, etcd = two(tmp_path)
    assert LAYOUT.admin_key("user", "guest") in etcd.data
    assert LAYOUT.admin_key("permission", "guest", "/") in etcd.data
    assert LAYOUT.admin_key("vhost", "/") in etcd.data
    # A run-time change of a configured user survives a node's restart: the seed only fills what is absent.
    a.change(lambda: a.node.admin.put_user("guest", hash_password("changed"), ("administrator",)))
    again = Member(tmp_path, "b", etcd)
    again.start()
    assert again.node.authority.users["guest"].password_hash == a.node.authority.users["guest"].password_hash


def test_a_user_and_permissions_made_on_one_node_reach_the_other(tmp_path: Path) -> None:
    a, b, _ = two(tmp_path)
    a.change(lambda: a.node.admin.put_user("x", hash_password("pw"), ("monitoring",)))
    a.change(lambda: a.node.admin.set_permissions("x", "/", "^x\\.", ".*", ".*"))
    assert "x" not in b.node.authority.users
    b.watch()
    assert b.node.authority.users["x"].tags == ("monitoring",)
    assert b.node.authority.permissions[("x", "/")].configure.pattern == "^x\\."
    b.change(lambda: b.node.admin.clear_permissions("x", "/"))
    a.watch()
    assert ("x", "/") not in a.node.authority.permissions
    b.change(lambda: b.node.admin.delete_user("x"))
    a.watch()
    assert "x" not in a.node.authority.users


def test_vhosts_limits_policies_and_topic_permissions_follow(tmp_path: Path) -> None:
    a, b, _ = two(tmp_path)
    a.change(lambda: a.node.admin.put_vhost("v", "guest", "about v", ("t",)))
    a.change(lambda: a.node.admin.set_vhost_limit("v", "max-queues", 3))
    a.change(lambda: a.node.admin.set_user_limit("guest", "max-channels", 7))
    a.change(lambda: a.node.admin.set_topic_permission("guest", "v", "amq.topic", "^a", "^b"))
    a.change(lambda: a.node.admin.set_policy("v", "cap", {"pattern": "^q", "definition": {"max-length": 2}}))
    b.watch()
    vhost = b.node.vhosts["v"]
    assert (vhost.description, vhost.tags, vhost.limits) == ("about v", ("t",), {"max-queues": 3})
    assert b.node.authority.permissions[("guest", "v")].read.pattern == ".*"  # the creator's, as RabbitMQ
    assert b.node.admin.user_limits == {"guest": {"max-channels": 7}}
    assert [(t.exchange, t.write) for t in b.node.authority.topic_permissions] == [("amq.topic", "^a")]
    assert vhost.policies.policies["cap"].definition == {"max-length": 2}
    assert b.node.cluster is not None
    with b.node.cluster.metadata.quietly():  # as if its record had come from etcd
        queue = vhost.declare_queue(
            "q1", owner=None, durable=False, exclusive=False, auto_delete=False, arguments={}
        )
    assert queue.policy is not None and queue.policy.name == "cap"
    a.change(lambda: a.node.admin.clear_policy("v", "cap"))
    b.watch()
    assert queue.policy is None
    a.change(lambda: a.node.admin.delete_vhost("v"))
    b.watch()
    assert "v" not in b.node.vhosts
    assert ("guest", "v") not in b.node.authority.permissions
    assert not b.node.authority.topic_permissions


def test_a_vhost_deletion_takes_its_exchanges_and_queues_with_it() -> None:
    layout = LAYOUT
    vhost = json.dumps({"name": "v", "description": "", "tags": []}).encode()
    before = {layout.admin_key("vhost", "v"): vhost}
    [txn] = change_txns(layout, before, {})
    assert txn.success == (Delete(layout.admin_key("vhost", "v")), Delete.prefix(layout.vhost_meta("v")))


def test_only_what_changed_is_written_in_transactions_etcd_accepts() -> None:
    before = {LAYOUT.admin_key("user", "same"): b"1", LAYOUT.admin_key("user", "old"): b"1"}
    after = {LAYOUT.admin_key("user", "same"): b"1", LAYOUT.admin_key("user", "new"): b"2"}
    [txn] = change_txns(LAYOUT, before, after)
    assert txn.success == (
        Put(LAYOUT.admin_key("user", "new"), b"2"),
        Delete(LAYOUT.admin_key("user", "old")),
    )
    many = {LAYOUT.admin_key("user", f"u{i}"): b"x" for i in range(MAX_TXN_OPS * 2 + 1)}
    txns = change_txns(LAYOUT, {}, many)
    assert [len(t.success) for t in txns] == [MAX_TXN_OPS, MAX_TXN_OPS, 1]


def test_a_change_on_its_way_is_not_undone_by_other_events(tmp_path: Path) -> None:
    a, b, etcd = two(tmp_path)
    before = a.view.records()
    a.node.admin.put_user("pending", hash_password("pw"), ())
    change = a.view.change(before, a.view.records())
    assert change is not None
    b.change(lambda: b.node.admin.put_user("other", hash_password("pw"), ()))
    a.watch()  # an event about another key: the pending user stays
    assert {"pending", "other"} <= set(a.node.authority.users)
    change.error = RuntimeError("etcd unreachable")
    a.view.completed(change, [])  # it failed: the node goes back to what etcd holds
    assert "pending" not in a.node.authority.users and "other" in a.node.authority.users


def test_records_from_another_version_do_not_break_the_node(tmp_path: Path) -> None:
    a, _, etcd = two(tmp_path)
    etcd.txn(seed_txns({LAYOUT.admin_key("user", "odd"): b"not json"})[0])
    etcd.txn(seed_txns({LAYOUT.admin_key("user", "odd2"): b'{"name": "odd2"}'})[0])
    a.watch()
    assert "guest" in a.node.authority.users
    assert admin_records(a.node, LAYOUT)[LAYOUT.admin_key("vhost", "/")]
