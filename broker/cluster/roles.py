"""The hook between replication and a vhost's queue table: which object the table holds for a
replicated queue, as this node's role in it changes.

The contract (kept stable for any-node access, which installs proxies):

- The replica state a follower keeps lives in the replication layer (broker/server/replication.py,
  `ReplicaLog`s), never in the vhost's queue table.
- On `Elected`, replication builds the leader's `Queue` from the node's replica state
  (`build_leader_queue`) and calls `QueueRoles.lead(vhost, queue)`, which must put it in
  `vhost.queues[queue.name]` in place of whatever the table held (the node's own instance, or a proxy).
- On `Deposed` (or the queue's leadership otherwise lost), replication stops the journal first (nothing
  more is written, shipped or confirmed) and calls `QueueRoles.follow(vhost, queue)` with the queue
  it had installed: the table must then hold what a non-leader holds.

`QueueRoles` below does both by swapping the queue objects in place (bindings move to the new object, the
old one's consumers get basic.cancel); any-node access replaces it (`ClusterState.roles`) with one that
swaps a proxy in and out.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING

from leveret.broker.cluster.replica import ReplicaState, unpack
from leveret.broker.queues.journal import NULL_JOURNAL, Journal
from leveret.broker.queues.lifecycle import Lifecycle, needs_lifecycle
from leveret.broker.queues.queue import Queue
from leveret.broker.recovery import restore_queue
from leveret.broker.store.queue_log import NO_DEADLINE, RecoveredLog

if TYPE_CHECKING:
    from leveret.broker.cluster.replication import ReplicatedJournal
    from leveret.broker.vhost import VirtualHost


def build_leader_queue(
    vhost: VirtualHost, like: Queue, state: ReplicaState, journal: ReplicatedJournal, wall_now: float
) -> Queue:
    """The leader's queue: `like`'s definition, holding every message of the replica state, ready, in
    seq order, with its delivery count and what its logged TTL deadline leaves it (`wall_now`: the wall
    clock, seconds since the epoch). It comes back the way a durable queue recovers (broker/recovery.py):
    what the memory budget leaves room for is read back into memory, the rest stays in the replica files
    as paged-out chunks, read back ahead of its consumers like any queue's. Every message of the replica
    must be on disk (`ReplicaState.resident` 0). Each comes back redelivered=true: a leader changes only
    when the old one failed, and its deliveries did not wait for their delivered records to reach a
    replica, so any message may have been delivered (as after a single node's crash:
    store/clean_shutdown.py)."""
    queue = _new_queue(vhost, like, journal)
    recovered = _as_recovered(state)
    restore_queue(queue, journal.read_enqueues, recovered, state.next_seq, True, wall_now)
    return queue


def _as_recovered(state: ReplicaState) -> RecoveredLog:
    """The replica's messages as the columns recovery reads a durable queue's log into."""
    seqs, locations, sizes = array("q"), array("q"), array("q")
    properties = array("I")
    deadlines, returns = array("q"), array("q")
    kept = {}  # messages still in memory (in a unit test; on a node every one is on disk by now)
    for position, (seq, value) in enumerate(state.messages.items()):
        seqs.append(seq)
        if isinstance(value, int):
            item = unpack(value)
        else:
            item = value
            if item.body is not None:
                kept[position] = (seq, item.exchange, item.routing_key, item.properties_raw, item.body)
        locations.append(item.at)
        sizes.append(item.size)
        properties.append(item.properties_size)
        deadlines.append(item.deadline or NO_DEADLINE)
        returns.append(item.returns)
    timed = any(deadline != NO_DEADLINE for deadline in deadlines)
    return RecoveredLog(seqs, locations, sizes, properties, bytearray(len(seqs)), timed,
                        kept,  # type: ignore[arg-type]
                        deadlines=deadlines if timed else None, returns=returns if any(returns) else None)


def _new_queue(vhost: VirtualHost, like: Queue, journal: Journal) -> Queue:
    queue = Queue(like.name, vhost.name, durable=like.durable, auto_delete=like.auto_delete,
                  arguments=like.arguments, journal=journal, host=vhost)
    if needs_lifecycle(like.arguments):
        Lifecycle(queue)
    vhost.apply_queue_policies(queue)
    return queue


def swap_queue(vhost: VirtualHost, old: Queue, new: Queue) -> None:
    """`new` takes `old`'s place in the vhost: its bindings and its table entry. `old`'s consumers are
    cancelled (basic.cancel, as RabbitMQ does when a queue's leader moves); what they hold unacked is
    settled or requeued on `old`, whose journal no longer writes."""
    bindings = [
        (exchange, binding.routing_key, binding.arguments)
        for exchange in vhost.exchanges.values()
        for binding in list(exchange.bindings)
        if binding.destination is old
    ]
    for exchange, routing_key, arguments in bindings:
        exchange.unbind(old, routing_key, arguments)
        exchange.bind(new, routing_key, arguments)
    vhost.queues[new.name] = new
    for consumer in list(old.consumers):
        consumer.cancelled_by_broker()
    old.consumers.clear()


class QueueRoles:
    """The single-table default: the vhost's own queue object is swapped for the leader's and back."""

    def lead(self, vhost: VirtualHost, queue: Queue) -> None:
        current = vhost.queues.get(queue.name)
        if current is None:
            vhost.queues[queue.name] = queue
            return
        swap_queue(vhost, current, queue)

    def follow(self, vhost: VirtualHost, queue: Queue) -> None:
        if vhost.queues.get(queue.name) is queue:
            # The journal a non-leader's instance has (the node's NotLeaderJournal: publishes nacked).
            journal = vhost.journal_for(vhost.name, queue.name) if vhost.journal_for else NULL_JOURNAL
            swap_queue(vhost, queue, _new_queue(vhost, queue, journal))
