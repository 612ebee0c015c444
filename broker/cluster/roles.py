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

from typing import TYPE_CHECKING

from leveret.broker.cluster.replica import ReplicaState
from leveret.broker.message import Message
from leveret.broker.queues.entry import Entry
from leveret.broker.queues.journal import NULL_JOURNAL, Journal
from leveret.broker.queues.lifecycle import Lifecycle, needs_lifecycle
from leveret.broker.queues.queue import Queue

if TYPE_CHECKING:
    from leveret.broker.vhost import VirtualHost


def build_leader_queue(
    vhost: VirtualHost, like: Queue, state: ReplicaState, journal: Journal, wall_now: float
) -> Queue:
    """The leader's queue: `like`'s definition, holding every message of the replica state, ready, in
    seq order, with its delivery count and what its logged TTL deadline leaves it (`wall_now`: the wall
    clock, seconds since the epoch). Each comes back redelivered=true: a leader changes only when the
    old one failed, and its deliveries did not wait for their delivered records to reach a replica, so
    any message may have reached a consumer (as after a single node's crash: store/clean_shutdown.py).
    Messages the old leader held for at-least-once dead-lettering are held again, not ready, and
    forwarded again (to every target, as RabbitMQ's new leader does) when the timers run."""
    queue = _new_queue(vhost, like, journal)
    entries = []
    returns = []
    expires_in: list[float | None] = []
    held_entries: list[Entry] = []
    reasons: list[str] = []
    for seq, held in state.held.items():
        entry = Entry(Message(held.exchange, held.routing_key, held.properties_raw, held.body), seq, True)
        entry.logged = -1  # replication.REPLICATED: journalled, nothing in the store to read back
        if held.dead_lettering:
            held_entries.append(entry)
            reasons.append(held.dead_lettering)
            continue
        entries.append(entry)
        returns.append(held.returns)
        expires_in.append(max(held.deadline / 1000 - wall_now, 0.0) if held.deadline else None)
    timed = any(left is not None for left in expires_in)
    queue.restore(entries, state.next_seq, expires_in if timed else None, returns if any(returns) else None)
    if held_entries:
        if queue.lifecycle is not None:
            queue.lifecycle.restore_held(held_entries, reasons)
        else:  # no dead-lettering now: they went
            for entry, reason in zip(held_entries, reasons, strict=True):
                journal.removed([entry], reason)
    return queue


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
