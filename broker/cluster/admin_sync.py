"""Vhosts, users, permissions, topic permissions, vhost and user limits, policies and operator policies
as cluster metadata: one etcd key each under `admin/`, the same on every node.

Both directions work on the whole state at once (it is small: what an operator types), so they cannot
disagree about a case:

- Out: `admin_records(node)` renders the node's state as {key: value}. A change made on this node (over
  the management API, or a definitions import) is carried out locally by the node's Administration, as on
  a single node; the difference between the records before and after it is the etcd transaction
  (`AdminView.change`). Until etcd answers, that difference is an overlay on etcd's state, so a watch
  event arriving meanwhile does not undo the change here.
- In: every node watches `admin/`; after each event (and at start) `AdminView.reconcile` makes the node's
  state exactly what etcd holds (with the overlays), through `apply_records`.

Concurrent changes of one key from two nodes: the later one in etcd's order wins, on every node (each
applies etcd's events in order). Pure: broker/server/cluster.py and the management API do the I/O.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from leveret.broker.admin import Administration, compile_permissions, user_record
from leveret.broker.admin import Node as AdministeredNode
from leveret.broker.cluster.etcd_ops import Compare, Delete, KeyValue, Put, Txn, WatchEvent
from leveret.broker.cluster.keys import KeyLayout
from leveret.broker.policies import PolicyError, parse_policy
from leveret.config import TopicPermission, User

log = logging.getLogger(__name__)


class Node(AdministeredNode, Protocol):
    """What this module reads and changes of broker/node.py's Node."""

    @property
    def admin(self) -> Administration: ...

# etcd refuses a transaction of more operations than --max-txn-ops (128 by default): a larger change (a big
# definitions import) is sent as several transactions of at most this many.
MAX_TXN_OPS = 100

Records = dict[bytes, bytes]


def _value(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True).encode()


def admin_records(node: Node, layout: KeyLayout) -> Records:
    """The node's users, vhosts, permissions, limits and policies as etcd keys and values."""
    key = layout.admin_key
    records: Records = {}
    authority = node.authority
    for name, vhost in node.vhosts.items():
        records[key("vhost", name)] = _value(
            {"name": name, "description": vhost.description, "tags": list(vhost.tags)}
        )
        if vhost.limits:
            records[key("vhost-limits", name)] = _value({"vhost": name, "limits": dict(vhost.limits)})
        for kind, operator in (("policy", False), ("operator-policy", True)):
            for policy in vhost.policies.of_kind(operator).values():
                records[key(kind, name, policy.name)] = _value(policy.record())
    for user in authority.users.values():
        records[key("user", user.name)] = _value(user_record(user))
    for (user_name, vhost_name), permissions in authority.permissions.items():
        records[key("permission", user_name, vhost_name)] = _value(
            {
                "user": user_name,
                "vhost": vhost_name,
                "configure": permissions.configure.pattern,
                "write": permissions.write.pattern,
                "read": permissions.read.pattern,
            }
        )
    for topic in authority.topic_permissions:
        records[key("topic-permission", topic.user, topic.vhost, topic.exchange)] = _value(
            {
                "user": topic.user,
                "vhost": topic.vhost,
                "exchange": topic.exchange,
                "write": topic.write,
                "read": topic.read,
            }
        )
    for user_name, limits in node.admin.user_limits.items():
        if limits:
            records[key("user-limits", user_name)] = _value({"user": user_name, "limits": dict(limits)})
    return records


def seed_records(node: Node, layout: KeyLayout) -> Records:
    """What the configuration file defines (vhosts, users, permissions, topic permissions), as records:
    each is put in etcd at start only where its key is absent. etcd's record wins over the file's."""
    config = node.config
    key = layout.admin_key
    wanted = {key("vhost", name) for name in config.vhosts}
    wanted |= {key("user", user.name) for user in config.users}
    wanted |= {key("permission", p.user, p.vhost) for p in config.permissions}
    wanted |= {key("topic-permission", t.user, t.vhost, t.exchange) for t in config.topic_permissions}
    return {k: v for k, v in admin_records(node, layout).items() if k in wanted}


def seed_txns(records: Records) -> list[Txn]:
    """One put-if-absent per record (several nodes starting at once seed the same values: harmless)."""
    return [Txn((Compare.absent(k),), (Put(k, v),)) for k, v in sorted(records.items())]


def change_txns(layout: KeyLayout, before: Records, after: Records) -> list[Txn]:
    """The transactions that turn `before` into `after` in etcd (one unless the change is very large). A
    deleted vhost takes its exchange, queue and binding records with it."""
    ops: list[Put | Delete] = [Put(k, v) for k, v in sorted(after.items()) if before.get(k) != v]
    for gone in sorted(k for k in before if k not in after):
        ops.append(Delete(gone))
        if layout.admin_kind(gone) == "vhost":
            ops.append(Delete.prefix(layout.vhost_meta(json.loads(before[gone])["name"])))
    return [Txn((), tuple(ops[i : i + MAX_TXN_OPS])) for i in range(0, len(ops), MAX_TXN_OPS)]


@dataclass(eq=False)
class AdminChange:
    """A change made on this node, on its way to etcd: its records, until etcd has them."""

    txns: list[Txn]
    overlay: dict[bytes, bytes | None]  # None: a deletion
    error: Exception | None = field(default=None, repr=False)


class AdminView:
    """etcd's `admin/` range as this node has seen it, and the node's state made to match it."""

    def __init__(self, layout: KeyLayout) -> None:
        self.layout = layout
        self.kvs: dict[bytes, KeyValue] = {}
        self.tombstones: dict[bytes, int] = {}  # key -> revision of a deletion the watch has not passed
        self.revision = 0
        self.pending: list[AdminChange] = []
        self.file_seeds: Records = {}  # the load_definitions file's records (seed_with)
        self.node: Node | None = None  # set by the Node
        # A vhost that has just appeared: the metadata view puts its exchanges, queues and bindings in.
        self.vhost_added: Callable[[str], None] = lambda name: None
        # Changes to the vhosts' queues made meanwhile are etcd's already (the metadata view's quietly).
        self.quietly: Callable[[], Any] = nullcontext
        # Send a change to etcd and call back when it is done (broker/server/cluster.py sets it).
        self.send: Callable[[AdminChange, Callable[[], None]], None] = self._not_running

    # ---- this node's own changes ------------------------------------------------------------------

    def seed(self) -> Records:
        """Nothing without a node (a ClusterState on its own, as some tests run one)."""
        if self.node is None:
            return {}
        return seed_records(self.node, self.layout) | self.file_seeds

    def seed_with(self, before: Records) -> None:
        """What the node changed since `before` (its load_definitions file) seeds etcd too."""
        after = self.records()
        self.file_seeds = {k: v for k, v in after.items() if before.get(k) != v}

    def records(self) -> Records:
        return admin_records(self.node, self.layout) if self.node is not None else {}

    def change(self, before: Records, after: Records) -> AdminChange | None:
        txns = change_txns(self.layout, before, after)
        if not txns:
            return None
        overlay: dict[bytes, bytes | None] = {k: v for k, v in after.items() if before.get(k) != v}
        overlay.update({k: None for k in before if k not in after})
        change = AdminChange(txns, overlay)
        self.pending.append(change)
        return change

    def completed(self, change: AdminChange, revisions: list[int]) -> None:
        """etcd did the change (its transactions at these revisions), or failed (`change.error`): in both
        cases the node goes back to what etcd holds as far as known, which now includes the change."""
        self.pending.remove(change)
        if change.error is None and len(revisions) == len(change.txns):
            for txn, revision in zip(change.txns, revisions, strict=True):
                for op in txn.success:
                    if isinstance(op, Put):
                        self._put(KeyValue(op.key, op.value, revision, revision))
                    elif isinstance(op, Delete) and op.range_end is None:
                        self._delete(op.key, revision)
        self.reconcile()

    def _not_running(self, change: AdminChange, done: Callable[[], None]) -> None:
        change.error = RuntimeError("the cluster tasks are not running")
        self.completed(change, [])
        done()

    # ---- the watch's side --------------------------------------------------------------------------

    def reset(self, kvs: Iterable[KeyValue], revision: int) -> None:
        self.kvs = {kv.key: kv for kv in kvs}
        self.tombstones.clear()
        self.revision = revision
        self.reconcile()

    def apply(self, events: list[WatchEvent], revision: int) -> None:
        for event in events:
            if event.kind == "DELETE":
                self._delete(event.kv.key, event.kv.mod_revision)
            else:
                self._put(event.kv)
        self.revision = max(self.revision, revision)
        self.tombstones = {k: rev for k, rev in self.tombstones.items() if rev > self.revision}
        self.reconcile()

    def _known(self, key: bytes) -> int:
        kv = self.kvs.get(key)
        return kv.mod_revision if kv is not None else self.tombstones.get(key, 0)

    def _put(self, kv: KeyValue) -> None:
        if kv.mod_revision > self._known(kv.key):
            self.kvs[kv.key] = kv
            self.tombstones.pop(kv.key, None)

    def _delete(self, key: bytes, revision: int) -> None:
        if revision > self._known(key):
            self.kvs.pop(key, None)
            self.tombstones[key] = revision

    def desired(self) -> Records:
        """etcd's records, with this node's changes still on their way laid over them."""
        records = {key: kv.value for key, kv in self.kvs.items()}
        for change in self.pending:
            for key, value in change.overlay.items():
                if value is None:
                    records.pop(key, None)
                else:
                    records[key] = value
        return records

    def reconcile(self) -> None:
        if self.node is None:
            return
        with self.quietly():
            added = apply_records(self.node, self.layout, self.desired())
        for name in added:
            self.vhost_added(name)


def _decoded(layout: KeyLayout, records: Records) -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for key, value in records.items():
        kind = layout.admin_kind(key)
        try:
            fields = json.loads(value)
        except ValueError:
            log.warning("cluster admin record %r is not JSON; ignored", key)
            continue
        if kind is not None and isinstance(fields, dict):
            by_kind.setdefault(kind, []).append(fields)
    return by_kind


def apply_records(node: Node, layout: KeyLayout, records: Records) -> list[str]:
    """Make the node's admin state exactly `records`; the names of the vhosts it added."""
    by_kind = _decoded(layout, records)
    try:
        return _apply(node, by_kind)
    except (KeyError, TypeError, ValueError) as error:  # a record another version wrote, say
        log.warning("cannot apply cluster admin records: %r", error)
        return []


def _apply(node: Node, by_kind: dict[str, list[dict[str, Any]]]) -> list[str]:
    admin, authority = node.admin, node.authority
    vhosts = {r["name"]: r for r in by_kind.get("vhost", [])}
    added = []
    for name in [name for name in node.vhosts if name not in vhosts]:
        admin.delete_vhost(name)  # closes its connections (320), as on the node that deleted it
    for name, record in vhosts.items():
        if name not in node.vhosts:
            node.add_vhost(name)
            added.append(name)
        vhost = node.vhosts[name]
        vhost.description, vhost.tags = record["description"], tuple(record["tags"])
    limits = {r["vhost"]: r["limits"] for r in by_kind.get("vhost-limits", [])}
    for name, vhost in node.vhosts.items():
        if vhost.limits != limits.get(name, {}):
            vhost.limits = dict(limits.get(name, {}))

    users = {r["name"]: r for r in by_kind.get("user", [])}
    for name in [name for name in authority.users if name not in users]:
        del authority.users[name]
    for name, record in users.items():
        existing = authority.users.get(name)
        if existing is None or user_record(existing) != record:
            authority.users[name] = User(
                name,
                record["password_hash"],
                tuple(record["tags"]),
                loopback_only=record["loopback_only"],
                hashing_algorithm=record["hashing_algorithm"],
            )
    admin.user_limits = {
        r["user"]: dict(r["limits"]) for r in by_kind.get("user-limits", []) if r["user"] in users
    }

    touched: set[tuple[str, str]] = set()
    wanted = {
        (r["user"], r["vhost"]): r
        for r in by_kind.get("permission", [])
        if r["user"] in users and r["vhost"] in vhosts
    }
    for pair in [pair for pair in authority.permissions if pair not in wanted]:
        del authority.permissions[pair]
        touched.add(pair)
    for pair, record in wanted.items():
        patterns = (record["configure"], record["write"], record["read"])
        now = authority.permissions.get(pair)
        held = (now.configure.pattern, now.write.pattern, now.read.pattern) if now is not None else None
        if held != patterns:
            authority.permissions[pair] = compile_permissions(*patterns)
            touched.add(pair)
    topics = {
        TopicPermission(r["user"], r["vhost"], r["exchange"], r["write"], r["read"])
        for r in by_kind.get("topic-permission", [])
        if r["user"] in users and r["vhost"] in vhosts
    }
    if topics != set(authority.topic_permissions):
        touched |= {(t.user, t.vhost) for t in topics.symmetric_difference(authority.topic_permissions)}
        authority.topic_permissions = tuple(sorted(topics, key=lambda t: (t.user, t.vhost, t.exchange)))
    for user_name, vhost_name in sorted(touched):
        admin.refresh_connections(user_name, vhost_name)

    for kind, operator in (("policy", False), ("operator-policy", True)):
        _apply_policies(node, by_kind.get(kind, []), operator)
    return added


def _apply_policies(node: Node, records: list[dict[str, Any]], operator: bool) -> None:
    for name, vhost in node.vhosts.items():
        wanted = {r["name"]: r for r in records if r["vhost"] == name}
        current = vhost.policies.of_kind(operator)
        for gone in [policy for policy in current if policy not in wanted]:
            vhost.clear_policy(gone, operator=operator)
        for policy_name, record in wanted.items():
            existing = current.get(policy_name)
            if existing is not None and existing.record() == record:
                continue
            try:
                policy = parse_policy(name, policy_name, record, operator=operator)
            except PolicyError as error:
                log.warning("cluster policy %r in vhost %r refused: %s", policy_name, name, error)
                continue
            vhost.set_policy(policy, operator=operator)
