"""Cluster metadata: exchanges, queues and bindings kept in etcd, applied on every node.

Two directions, both synchronous here (broker/server/cluster.py does the I/O):

- Out: a client's declare, delete, bind or unbind reaches a hook (broker/cluster/hooks.py), which raises
  ClusterPending with a `Change`: one etcd transaction, built here as data. A declare creates the record
  only if the key is absent, and otherwise reads back what is stored, so etcd's record is the truth
  (a redeclare with other arguments on another node still gets 406) and a retry after an ambiguous
  failure is harmless. When the transaction is done, `completed` puts what etcd holds into the vhost and
  the session handles the method again; the hook then lets it through (`replaying`).
- In: every node watches the metadata prefix and `reset`/`apply` bring its vhosts to what etcd holds
  (`applying`: the hooks stay silent meanwhile). Each key's last applied revision is kept, so an event
  older than what a completed transaction already applied is skipped.

Deletions are carried out on the asking node by the method itself (so queue.delete-ok has the count),
and everywhere else by the watch. Exclusive and server-named queues, and their bindings, stay local.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from leveret.amqp.errors import ChannelError
from leveret.broker.cluster.etcd_ops import (
    Compare,
    Delete,
    Get,
    KeyValue,
    Put,
    Txn,
    TxnResult,
    WatchEvent,
)
from leveret.broker.cluster.hooks import ClusterPending, LocalMetadata
from leveret.broker.cluster.keys import KeyLayout
from leveret.broker.cluster.records import (
    BindingRecord,
    ExchangeRecord,
    QueueRecord,
    binding_id,
    decode_table,
    encode_table,
)
from leveret.broker.exchanges.base import Exchange
from leveret.broker.queues.queue import Queue

if TYPE_CHECKING:
    from leveret.broker.vhost import VirtualHost

log = logging.getLogger(__name__)

# Order in which a whole snapshot is applied: the ends of bindings before the bindings.
_KIND_ORDER = {"exchange": 0, "queue": 1, "binding": 2}


@dataclass(eq=False)
class Change:
    """One etcd transaction a client's method waits for (or, for `removed`, that nobody waits for)."""

    action: str  # declare, delete, bind, unbind, lookup
    key: bytes
    txn: Txn
    # Keys whose Get answers (in the failure branch, or the whole txn for a lookup) to apply.
    read_back: tuple[bytes, ...] = ()
    result: TxnResult | None = None
    error: Exception | None = field(default=None, repr=False)

    def same(self, other: Change) -> bool:
        return self.action == other.action and self.key == other.key


class _RemoteConnection:
    """The owner of an exclusive queue whose connection is on another node: no session here is it."""

    def __repr__(self) -> str:
        return "<a connection on another node>"


REMOTE_OWNER = _RemoteConnection()


def is_stored_queue(queue: Any) -> bool:
    """A queue every node has an instance of, with its bindings (not exclusive, not server-named)."""
    return isinstance(queue, Queue) and not queue.exclusive and not queue.name.startswith("amq.")


def is_placeholder(queue: Any) -> bool:
    """This node's stand-in for an exclusive queue owned by a connection on another node: it answers
    405 RESOURCE_LOCKED to everyone here, as the owner's node does to other connections."""
    return isinstance(queue, Queue) and queue.exclusive_owner is REMOTE_OWNER


class ClusterMetadata(LocalMetadata):
    def __init__(
        self, layout: KeyLayout, node_name: str, replica_set: Callable[[str, str], list[str]]
    ) -> None:
        self.layout = layout
        self.node_name = node_name
        self.replica_set = replica_set
        self.vhosts: dict[str, VirtualHost] = {}
        self.kvs: dict[bytes, KeyValue] = {}  # what etcd holds, as far as applied
        self.tombstones: dict[bytes, int] = {}  # key -> revision of a deletion the watch has not passed
        self.revision = 0  # the watch has delivered every change up to this one
        self.applying = False
        self.replaying: Change | None = None
        self._confirmed: bytes | None = None  # the key of the change the replay went through
        self.requests: list[tuple[Change, Callable[[Change], None] | None]] = []
        self.wake: Callable[[], None] = lambda: None  # the server's metadata task sets this
        self.lease = 0  # this node's etcd lease (set on registration): exclusive queues' records live by it

    # ---- hooks (called by the vhosts) -------------------------------------------------------------

    def declaring_exchange(
        self,
        vhost: Any,
        name: str,
        kind: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
        creatable: bool,
    ) -> None:
        record = ExchangeRecord(name, kind, durable, auto_delete, internal, encode_table(arguments))
        self._declare(self.layout.exchange(vhost.name, name), record.encode(), creatable)

    def declaring_queue(
        self,
        vhost: Any,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
        creatable: bool,
    ) -> None:
        shared = durable and not exclusive
        replicas = self.replica_set(vhost.name, name) if shared else [self.node_name]
        table = encode_table(arguments)
        record = QueueRecord(name, durable, auto_delete, table, tuple(replicas), self.node_name, exclusive)
        # An exclusive queue's record goes with this node's lease: if the node dies, so does the lock.
        lease = self.lease if exclusive else 0
        self._declare(self.layout.queue(vhost.name, name), record.encode(), creatable, lease)

    def deleting_exchange(self, vhost: Any, name: str) -> None:
        self._ask(self._deletion(vhost, "exchange", name))

    def deleting_queue(self, vhost: Any, name: str) -> None:
        self._ask(self._deletion(vhost, "queue", name))

    def binding(
        self,
        vhost: Any,
        source: Any,
        destination: Any,
        routing_key: str,
        arguments: dict[str, Any],
        bind: bool,
    ) -> None:
        if self.applying or not self._stored_end(destination):
            return
        kind = "queue" if isinstance(destination, Queue) else "exchange"
        table = encode_table(arguments)
        key = self.layout.binding(
            vhost.name, source.name, binding_id(kind, destination.name, routing_key, table)
        )
        if not bind:
            self._ask(Change("unbind", key, Txn((), (Delete(key),))))
            return
        ends = [(self.layout.exchange(vhost.name, source.name), source)]
        ends.append(
            (
                self.layout.queue(vhost.name, destination.name)
                if kind == "queue"
                else self.layout.exchange(vhost.name, destination.name),
                destination,
            )
        )
        guards, revisions, reads = [], [], []
        for end_key, end in ends:
            if isinstance(end, Exchange) and end.name.startswith("amq.") or end.name == "":
                revisions.append(0)  # a predeclared exchange: on every node, never stored
                continue
            if end_key not in self.kvs:
                # An end this node holds without its record: learn its incarnation first (or that it
                # is gone, which the method then answers with 404).
                self._ask(Change("lookup", end_key, Txn((), (Get(end_key),)), (end_key,)))
            revision = self.kvs[end_key].create_revision if end_key in self.kvs else 0
            guards.append(Compare(end_key, "CREATE", "EQUAL", revision))
            revisions.append(revision)
            reads.append(end_key)
        record = BindingRecord(
            source.name, destination.name, kind, routing_key, table, revisions[0], revisions[1]
        )
        txn = Txn(tuple(guards), (Put(key, record.encode()),), tuple(Get(k) for k in reads))
        self._ask(Change("bind", key, txn, tuple(reads)))

    def looking_up(self, vhost: Any, kind: str, name: str) -> None:
        if self.applying:
            return
        key = (
            self.layout.exchange(vhost.name, name)
            if kind == "exchange"
            else self.layout.queue(vhost.name, name)
        )
        self._ask(Change("lookup", key, Txn((), (Get(key),)), (key,)))

    def removed(self, vhost: Any, thing: Any) -> None:
        if self.applying:
            return
        kind = "queue" if isinstance(thing, Queue) else "exchange"
        if thing.name.startswith("amq.") or is_placeholder(thing):
            return  # never stored, or not this node's to delete
        change = self._deletion(vhost, kind, thing.name)
        if change.key == self._confirmed:
            return  # the client's own delete, which etcd has done already
        if kind == "queue" and not thing.durable and not self._declared_here(vhost, thing.name):
            # Auto-delete or x-expires of this node's own instance of a non-durable queue declared
            # elsewhere: every node keeps an instance of its own, and only the declaring node's decides for
            # the cluster. Here the instance goes; forgetting the record lets the next method naming it
            # bring it back. (A durable queue has one instance, at its leader, which decides.)
            self.kvs.pop(change.key, None)
            return
        self.submit(change, None)

    def exclusive_claims(self) -> list[Txn]:
        """After registering with a new lease: put again (if nobody took the name meanwhile) the records of
        this node's exclusive queues, which went with the old lease."""
        claims = []
        for vhost in self.vhosts.values():
            for queue in vhost.queues.values():
                if queue.exclusive and not is_placeholder(queue) and not queue.name.startswith("amq."):
                    table = encode_table(queue.arguments)
                    record = QueueRecord(
                        queue.name,
                        queue.durable,
                        queue.auto_delete,
                        table,
                        (self.node_name,),
                        self.node_name,
                        True,
                    )
                    key = self.layout.queue(vhost.name, queue.name)
                    claims.append(Txn((Compare.absent(key),), (Put(key, record.encode(), self.lease),)))
        return claims

    def _declared_here(self, vhost: Any, name: str) -> bool:
        kv = self.kvs.get(self.layout.queue(vhost.name, name))
        return kv is None or QueueRecord.decode(kv.value).declared_on == self.node_name

    # ---- building changes --------------------------------------------------------------------------

    def _declare(self, key: bytes, value: bytes, creatable: bool, lease: int = 0) -> None:
        if creatable:
            txn = Txn((Compare.absent(key),), (Put(key, value, lease),), (Get(key),))
        else:  # arguments that could not make a new one: only an existing record can answer
            txn = Txn((), (Get(key),))
        self._ask(Change("declare", key, txn, (key,)))

    def _deletion(self, vhost: Any, kind: str, name: str) -> Change:
        """Delete the record and the bindings from or to it that this node knows of (a binding it does not
        know of names the old incarnation, so it applies to nothing and is dropped when seen)."""
        key = (
            self.layout.exchange(vhost.name, name)
            if kind == "exchange"
            else self.layout.queue(vhost.name, name)
        )
        ops: list[Delete] = [Delete(key)]
        if kind == "exchange":
            ops.append(Delete.prefix(self.layout.bindings_of(vhost.name, name)))
        for binding_key, kv in self.kvs.items():
            parsed = self.layout.parse_meta(binding_key)
            if parsed is not None and parsed[0] == vhost.name and parsed[1] == "binding":
                record = BindingRecord.decode(kv.value)
                if record.destination_type == kind and record.destination == name:
                    ops.append(Delete(binding_key))
        return Change("delete", key, Txn((), tuple(ops)))

    def _ask(self, change: Change) -> None:
        """Let the change through if it is the one the session is replaying; else make the session wait."""
        if self.applying:
            return
        replaying = self.replaying
        # A bind whose ends had changed in etcd is asked again, with the ends as they are now.
        if (
            replaying is not None
            and replaying.same(change)
            and (change.action != "bind" or _succeeded(replaying))
        ):
            self.replaying = None
            self._confirmed = change.key
            return
        raise ClusterPending(change)

    @staticmethod
    def _stored_end(destination: Any) -> bool:
        return is_stored_queue(destination) if isinstance(destination, Queue) else destination.name != ""

    # ---- the server's side --------------------------------------------------------------------------

    def submit(self, change: Change, done: Callable[[Change], None] | None) -> None:
        self.requests.append((change, done))
        self.wake()

    def take_requests(self) -> list[tuple[Change, Callable[[Change], None] | None]]:
        requests, self.requests = self.requests, []
        return requests

    @contextmanager
    def replay(self, change: Change) -> Iterator[None]:
        """While the session handles the method again: its hook goes through."""
        self.replaying, self._confirmed = change, None
        try:
            yield
        finally:
            self.replaying = self._confirmed = None

    def completed(self, change: Change, result: TxnResult) -> None:
        """Put what the transaction found or made into the vhosts, before the method is handled again."""
        change.result = result
        if change.action in ("delete", "unbind"):
            return  # the method carries it out here, the watch everywhere else
        created = result.succeeded and (
            change.action == "bind" or change.action == "declare" and change.txn.compare
        )
        if created:
            put = change.txn.success[0]
            assert isinstance(put, Put)
            self._apply_put(KeyValue(put.key, put.value, result.revision, result.revision))
            return
        # What was read back: the record a declare found, a lookup's answer, the ends of a failed bind.
        for key, answer in zip(change.read_back, result.responses, strict=False):
            if isinstance(answer, list):
                if answer:
                    self._apply_put(answer[0])
                else:
                    self._apply_delete(key, result.revision)

    # ---- the watch's side --------------------------------------------------------------------------

    def reset(self, kvs: Iterable[KeyValue], revision: int) -> None:
        """Everything under the metadata prefix as of `revision`: make the vhosts hold exactly that."""
        desired = {kv.key: kv for kv in kvs}
        for key in [key for key in self.kvs if key not in desired]:
            self._apply_delete(key, revision, force=True)
        for kv in sorted(desired.values(), key=self._order):
            self._apply_put(kv, force=True)
        self._drop_unknown(desired)
        self.tombstones.clear()
        self.revision = revision

    def apply(self, events: list[WatchEvent], revision: int) -> None:
        for event in events:
            if event.kind == "DELETE":
                self._apply_delete(event.kv.key, event.kv.mod_revision)
            else:
                self._apply_put(event.kv)
        self.revision = max(self.revision, revision)
        self.tombstones = {key: rev for key, rev in self.tombstones.items() if rev > self.revision}

    def _order(self, kv: KeyValue) -> tuple[int, bytes]:
        parsed = self.layout.parse_meta(kv.key)
        return (_KIND_ORDER.get(parsed[1], 3) if parsed else 3, kv.key)

    def _known_revision(self, key: bytes) -> int:
        kv = self.kvs.get(key)
        return kv.mod_revision if kv is not None else self.tombstones.get(key, 0)

    def _apply_put(self, kv: KeyValue, *, force: bool = False) -> None:
        if not force and kv.mod_revision <= self._known_revision(kv.key):
            return
        self.kvs[kv.key] = kv
        self.tombstones.pop(kv.key, None)
        parsed = self.layout.parse_meta(kv.key)
        vhost = self.vhosts.get(parsed[0]) if parsed else None
        if parsed is None or vhost is None:
            return
        with self.quietly():
            try:
                if parsed[1] == "exchange":
                    self._put_exchange(vhost, ExchangeRecord.decode(kv.value))
                elif parsed[1] == "queue":
                    self._put_queue(vhost, QueueRecord.decode(kv.value))
                else:
                    self._put_binding(vhost, BindingRecord.decode(kv.value))
            except (ChannelError, ValueError, KeyError, TypeError) as error:
                log.warning("cannot apply cluster record %r: %s", kv.key, error)

    def _apply_delete(self, key: bytes, revision: int, *, force: bool = False) -> None:
        if not force and revision <= self._known_revision(key):
            return
        old = self.kvs.pop(key, None)
        self.tombstones[key] = revision
        parsed = self.layout.parse_meta(key)
        vhost = self.vhosts.get(parsed[0]) if parsed else None
        if parsed is None or vhost is None:
            return
        with self.quietly():
            if parsed[1] == "exchange":
                exchange = vhost.exchanges.get(parsed[2])
                if exchange is not None and not exchange.name.startswith("amq."):
                    vhost.remove_exchange(exchange)
            elif parsed[1] == "queue":
                queue = vhost.queues.get(parsed[2])
                if queue is not None and (is_stored_queue(queue) or is_placeholder(queue)):
                    vhost.remove_queue(queue)
            elif old is not None:
                self._remove_binding(vhost, BindingRecord.decode(old.value))

    @contextmanager
    def quietly(self) -> Iterator[None]:
        """Changes made meanwhile are this node's own business: applying etcd's records, or recovering
        from the node's disk at start (etcd's snapshot then decides what stays)."""
        before, self.applying = self.applying, True
        try:
            yield
        finally:
            self.applying = before

    # ---- records into a vhost ------------------------------------------------------------------------

    def _put_exchange(self, vhost: VirtualHost, record: ExchangeRecord) -> None:
        arguments = decode_table(record.arguments)
        existing = vhost.exchanges.get(record.name)
        if existing is not None:
            if (
                existing.kind,
                existing.durable,
                existing.auto_delete,
                existing.internal,
                existing.arguments,
            ) == (record.type, record.durable, record.auto_delete, record.internal, arguments):
                return
            vhost.remove_exchange(existing)
        vhost.declare_exchange(
            record.name,
            record.type,
            durable=record.durable,
            auto_delete=record.auto_delete,
            internal=record.internal,
            arguments=arguments,
        )

    def _put_queue(self, vhost: VirtualHost, record: QueueRecord) -> None:
        if record.exclusive and record.declared_on == self.node_name:
            return  # this node's own: the declaring method makes the queue, with its connection as owner
        durable, auto_delete, arguments = record.definition()
        existing = vhost.queues.get(record.name)
        if existing is not None:
            if existing.exclusive and not is_placeholder(existing):
                log.warning(
                    "cluster record for queue %r ignored: an exclusive queue here has the name", record.name
                )
                return
            definition = (existing.durable, existing.exclusive, existing.auto_delete, existing.arguments)
            if definition == (durable, record.exclusive, auto_delete, arguments):
                return
            vhost.remove_queue(existing)
        vhost.declare_queue(
            record.name,
            owner=REMOTE_OWNER if record.exclusive else None,
            durable=durable,
            exclusive=record.exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
            restoring=True,
        )

    def _ends(self, vhost: VirtualHost, record: BindingRecord) -> tuple[Exchange, Any] | None:
        """The binding's source and destination, if they are the incarnations it was made for."""
        source = vhost.exchanges.get(record.source)
        if record.destination_type == "queue":
            destination: Any = vhost.queues.get(record.destination)
            destination_key = self.layout.queue(vhost.name, record.destination)
        else:
            destination = vhost.exchanges.get(record.destination)
            destination_key = self.layout.exchange(vhost.name, record.destination)
        if source is None or destination is None:
            return None
        if record.source_revision != self._incarnation(self.layout.exchange(vhost.name, record.source)):
            return None
        if record.destination_revision != self._incarnation(destination_key):
            return None
        return source, destination

    def _incarnation(self, key: bytes) -> int:
        kv = self.kvs.get(key)
        return kv.create_revision if kv is not None else 0

    def _put_binding(self, vhost: VirtualHost, record: BindingRecord) -> None:
        ends = self._ends(vhost, record)
        if ends is not None:
            vhost.bind(ends[0], ends[1], record.routing_key, decode_table(record.arguments))

    def _remove_binding(self, vhost: VirtualHost, record: BindingRecord) -> None:
        ends = self._ends(vhost, record)
        # The exchange's own unbind: an auto-delete exchange is deleted by the node that unbound it.
        if ends is not None and ends[0].unbind(ends[1], record.routing_key, decode_table(record.arguments)):
            vhost.definitions_changed()

    def _drop_unknown(self, desired: dict[bytes, KeyValue]) -> None:
        """What this node holds that etcd does not (from its own disk, or changed while it was away)."""
        with self.quietly():
            for name, vhost in self.vhosts.items():
                for exchange in list(vhost.exchanges.values()):
                    if exchange.name and not exchange.name.startswith("amq."):
                        if self.layout.exchange(name, exchange.name) not in desired:
                            vhost.remove_exchange(exchange)
                for queue in list(vhost.queues.values()):
                    stored = is_stored_queue(queue) or is_placeholder(queue)
                    if stored and self.layout.queue(name, queue.name) not in desired:
                        vhost.remove_queue(queue)
                for exchange in list(vhost.exchanges.values()):
                    if not exchange.name:
                        continue
                    for binding in list(exchange.bindings):
                        destination = binding.destination
                        if not self._stored_end(destination):
                            continue
                        kind = "queue" if isinstance(destination, Queue) else "exchange"
                        bid = binding_id(
                            kind, destination.name, binding.routing_key, encode_table(binding.arguments)
                        )
                        if self.layout.binding(name, exchange.name, bid) not in desired:
                            exchange.unbind(destination, binding.routing_key, binding.arguments)
                            vhost.definitions_changed()


def _succeeded(change: Change) -> bool:
    return change.result is not None and change.result.succeeded
