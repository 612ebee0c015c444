"""The hook between replication and a vhost's queue table: which object the table holds for a
replicated queue, as this node's role in it changes.

The contract (kept stable for any-node access, which installs proxies):

- The replica state a follower keeps lives in the replication layer (broker/server/replication.py,
  `ReplicaLog`s), never in the vhost's queue table.
- On `Elected`, replication builds the leader's `Queue` from the node's replica state
  (`build_leader_queue`) and calls `QueueRoles.lead(vhost, queue, delivered)`, which must put it in
  `vhost.queues[queue.name]` in place of whatever the table held (the node's own instance, or a proxy);
  `delivered` names the messages the log says were delivered (any-node access keeps them for the
  consumers on other nodes that may still hold them).
- On `Deposed` (or the queue's leadership otherwise lost), replication stops the journal first (nothing
  more is written, shipped or confirmed) and calls `QueueRoles.follow(vhost, queue)` with the queue
  it had installed: the table must then hold what a non-leader holds.

`QueueRoles` below does both by swapping the queue objects in place (bindings move to the new object, the
old one's consumers get basic.cancel); any-node access replaces it (`ClusterState.roles`) with one that
swaps a proxy in and out.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING

from leveret.broker.cluster.replica import ReplicaState, unpack
from leveret.broker.queues.journal import NULL_JOURNAL, Journal
from leveret.broker.queues.lifecycle import Lifecycle, needs_lifecycle
from leveret.broker.queues.queue import Queue
from leveret.broker.recovery import restore_queue
from leveret.broker.store.queue_log import NO_DEADLINE, RecoveredLog
from leveret.broker.store.reader import Enqueued

if TYPE_CHECKING:
    from leveret.broker.cluster.replication import ReplicatedJournal
    from leveret.broker.vhost import VirtualHost


# What a new leader's queue reads back from the replica files at its election, on the event loop (in
# the election's step): a queue's whole backlog would hold the loop for as long as reading and decoding it
# takes, on the node that has just taken over. The rest is read back by the pager, in its worker thread.
ELECTION_READ = 4 * 1024 * 1024


def build_leader_queue(
    vhost: VirtualHost, like: Queue, state: ReplicaState, journal: ReplicatedJournal, wall_now: float
) -> Queue:
    """The leader's queue: `like`'s definition, holding every message of the replica state, ready, in
    seq order, with its delivery count and what its logged TTL deadline leaves it (`wall_now`: the wall
    clock, seconds since the epoch). It comes back the way a durable queue recovers (broker/recovery.py):
    what the memory budget leaves room for, up to `ELECTION_READ`, is read back into memory, the rest
    stays in the replica files as paged-out chunks, read back ahead of its consumers like any queue's. On
    a node every message of the replica is on disk by then (`ReplicaState.resident` 0; Replication waits
    for that). Each comes back redelivered=true: a leader changes only when the old one failed, and its
    deliveries did not wait for their delivered records to reach a replica, so any message may have
    reached a consumer (as after a single node's crash: store/clean_shutdown.py). Messages the old leader
    held for at-least-once dead-lettering are held again, not ready, and forwarded again (to every target,
    as RabbitMQ's new leader does) when the timers run."""
    queue = _new_queue(vhost, like, journal)
    recovered, in_memory = _as_recovered(state)

    def read(locations: Sequence[int]) -> list[Enqueued | None]:
        """From the replica files, but a message still in memory (a location <= 0: its index)."""
        on_disk = [at for at in locations if at > 0]
        found = iter(journal.read_enqueues(on_disk) if on_disk else ())
        return [in_memory[-at] if at <= 0 else next(found) for at in locations]

    restore_queue(queue, read, recovered, state.next_seq, True, wall_now, read_now=ELECTION_READ)
    return queue


def _as_recovered(state: ReplicaState) -> tuple[RecoveredLog, list[Enqueued]]:
    """The replica's messages as the columns recovery reads a durable queue's log into (those held for
    dead-lettering apart, as recovery finds them), and the messages still in memory, which the columns
    locate at minus their index in that list."""
    seqs, locations, sizes = array("q"), array("q"), array("q")
    properties = array("I")
    deadlines, returns = array("q"), array("q")
    in_memory: list[Enqueued] = [(0, "", "", b"", b"")]  # index 0 unused: 0 is no location
    held: list[tuple[int, int, str]] = []
    for seq, value in state.messages.items():
        item = unpack(value) if isinstance(value, int) else value
        at = item.at
        if item.body is not None:
            assert item.exchange is not None and item.routing_key is not None
            assert item.properties_raw is not None
            at = -len(in_memory)
            in_memory.append((seq, item.exchange, item.routing_key, item.properties_raw, item.body))
        if item.dead_lettering:
            held.append((seq, at, item.dead_lettering))
            continue
        seqs.append(seq)
        locations.append(at)
        sizes.append(item.size)
        properties.append(item.properties_size)
        deadlines.append(item.deadline or NO_DEADLINE)
        returns.append(item.returns)
    timed = any(deadline != NO_DEADLINE for deadline in deadlines)
    recovered = RecoveredLog(seqs, locations, sizes, properties, bytearray(len(seqs)), timed,
                             deadlines=deadlines if timed else None,
                             returns=returns if any(returns) else None, held=held)
    return recovered, in_memory


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

    def lead(self, vhost: VirtualHost, queue: Queue, delivered: Sequence[int] = ()) -> None:
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
