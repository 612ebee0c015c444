"""The leader's side of a replicated queue, sans-IO: its journal writes the log, and confirms follow acks.

On the leader the queue's journal is a `ReplicatedJournal`: every call the queue makes on its journal
(broker/queues/journal.py) becomes a record of the queue's log (broker/cluster/replica.py), stamped with
the leader's epoch, applied to the leader's own replica state and written to its replica file. Every
message counts as persistent, as in RabbitMQ's quorum queues: a replicated queue's messages survive the
loss of a minority of nodes whatever their delivery mode.

A publish's confirm waits for a ticket of the node's gate (broker/cluster/confirms.py), released when
its enqueue record is held (fsynced) by this node and by enough followers to make a majority of the
replica set (as a Raft log commits) and, at that moment, this node still leads the queue
(`Leadership.is_leader`). A slow follower therefore holds no confirm while the others keep up. What makes
that safe is the election (broker/cluster/leadership.py): a replica campaigns only once a majority's log
ends are known and none is ahead of its own (a pre-vote), so a new leader holds every confirmed entry.
Deliveries never wait.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from leveret.broker.cluster.confirms import ConfirmGate
from leveret.broker.cluster.replica import (
    DEAD_LETTERING,
    DELETED,
    DELIVERED,
    ENQUEUE,
    RETURNED,
    SETTLED,
    SETTLED_RANGE,
    Record,
    ReplicaLog,
    encode_entries,
)
from leveret.broker.cluster.replica_file import ReplicaFile
from leveret.broker.queues.journal import Journal

if TYPE_CHECKING:
    from leveret.broker.queues.entry import Entry

QueueId = tuple[str, str]

# `Entry.logged` of a replicated queue's entries: journalled, but not in the store (nothing to read back
# from a store location: paging writes them to page files as transient ones).
REPLICATED = -1

# Each leader numbers new messages from at least epoch * EPOCH_SEQS, so no two leaders ever give one seq
# to two messages (one that a leader numbered but never replicated, and another its successor numbered):
# a seq names one message cluster-wide, which a claim relies on (broker/cluster/remote.py). Epochs are
# etcd revisions, so 2^31 of them, each numbering up to 2^32 messages, fit in a signed 64-bit seq.
EPOCH_SEQS = 1 << 32


def first_seq(epoch: int, next_seq: int) -> int:
    """Where a leader of `epoch` numbers its new messages from, its log's next seq being `next_seq`."""
    return max(next_seq, epoch * EPOCH_SEQS)


def majority_held(own: int, followers: Sequence[int], replicas: int) -> int:
    """The end offset held by this node and enough followers to make a majority of `replicas`: the
    followers' acked ends, highest first, taken until the majority is reached."""
    needed = replicas // 2  # followers, besides this node
    if needed == 0:
        return own
    ranked = sorted(followers, reverse=True)
    return min(own, ranked[needed - 1]) if len(ranked) >= needed else 0


class LeaderQueue:
    """One queue this node leads, for one epoch."""

    def __init__(self, queue: QueueId, epoch: int, replica: ReplicaLog, file: ReplicaFile,
                 gate: ConfirmGate, followers: Sequence[str], wall_clock: Callable[[], float]) -> None:
        self.queue = queue
        # Seconds since the epoch (the store's): a TTL's end is logged as wall-clock time, since a new
        # leader's monotonic clock is another process's.
        self.wall_clock = wall_clock
        self.epoch = epoch
        self.replica = replica
        self.file = file
        self.gate = gate
        self.active = True
        # The end offset each follower holds durably (acked), and this node's own.
        self.acked: dict[str, int] = {node: 0 for node in followers}
        self.local_durable = replica.end
        # Where this epoch begins in the log: a follower records the epoch only once it holds all before it.
        self.epoch_start = replica.end
        # The end offset every confirm so far waited for (what a follower must hold to rejoin the ISR):
        # from the start, all this log holds, since the previous leader may have confirmed any of it.
        self.committed = replica.end
        # Followers reported caught up whose return to the ISR is not in etcd yet (shipping treats them
        # as in step meanwhile).
        self.joining: set[str] = set()
        # Enqueues waiting for their confirm: (offset their record ends at, ticket), in offset order.
        self.tickets: deque[tuple[int, int]] = deque()
        self._unwritten: list[tuple[int, Record]] = []
        self._unwritten_from = replica.end  # the offset of the first of them
        # Called after each append batch is begun (the server wakes the shipping tasks and the writer).
        self.changed: Callable[[], None] = lambda: None
        replica.start_epoch(epoch)
        replica.state.next_seq = first_seq(epoch, replica.state.next_seq)  # the queue built numbers from it
        file.epoch(epoch)

    def append(self, record: Record) -> int:
        """Add a record to the log; returns the end offset it makes (what a confirm waits for)."""
        if not self.active:
            return 0  # deposed: nothing more is written or shipped
        offset = self.replica.append(self.epoch, record)
        self._unwritten.append((self.epoch, record))
        if len(self._unwritten) == 1:
            self._unwritten_from = offset
            self.changed()
        return self.replica.end

    def take_writes(self) -> int:
        """Hand the records appended since the last call to the file; returns the end they reach."""
        if self._unwritten:
            positions: list[int] = []
            encoded = encode_entries(self._unwritten, positions)
            first = self._unwritten_from
            unwritten = self._unwritten
            self.file.entries(encoded, [(record[1], at, first + index) for index, ((_, record), at)
                                        in enumerate(zip(unwritten, positions, strict=True)) if at >= 0])
            self._unwritten = []
        return self.replica.end

    def commit(self, replicas: Sequence[str], leading: bool, me: str) -> bool:
        """Release the confirms a majority of the replica set now holds (fsynced), this node's own copy
        among them, if this node still leads. True if any were released."""
        if not self.active or not leading:
            return False
        held = majority_held(self.local_durable, [self.acked.get(node, 0) for node in replicas if node != me],
                             len(replicas))
        self.committed = max(self.committed, held)
        tickets = self.tickets
        released = []
        while tickets and tickets[0][0] <= held:
            released.append(tickets.popleft()[1])
        if released:
            self.gate.release(released)
        return bool(released)

    def depose(self) -> None:
        """No longer leader: confirms still owed are nacked (a client may publish again), nothing more
        is shipped or confirmed."""
        self.active = False
        if self.tickets:
            self.gate.fail([ticket for _, ticket in self.tickets])
            self.tickets.clear()

    def settled_since_commit(self) -> list[int]:
        """The seqs this log settled after the last point a majority was known to hold: the next leader
        (elected with the newest log of a majority) may not have those settlements, so a deposed leader
        hands them to it in its claim (broker/cluster/remote.py), or an acked message would come back."""
        replica = self.replica
        tail = replica.tail
        seqs: list[int] = []
        for index in range(max(self.committed - replica.base, 0), len(tail)):  # no slice: it may be long
            record = tail[index][1]
            if record[0] == SETTLED:
                seqs.extend(record[1])
        return seqs


class ReplicatedJournal(Journal):
    """The leader's journal: each call becomes a record of the queue's log. Its queue's paged-out
    messages from before the election are read back from the replica files (`read_enqueues`)."""

    __slots__ = ("leader", "done")

    def __init__(self, leader: LeaderQueue) -> None:
        self.leader = leader
        # Its queue was deleted: what that object still does (acks of what it had delivered) is not
        # logged, since a queue declared again under the name logs into the same log, from seq 1 again.
        self.done = False

    def logs(self, entry: Entry) -> bool:
        return not self.done

    def read_enqueues(self, locations: Sequence[int]) -> list[tuple[int, str, str, bytes, bytes] | None]:
        return [None if found is None else found[:5] for found in self.leader.file.read(locations)]

    def enqueued(self, entry: Entry, expires_in: float | None = None) -> int | None:
        leader = self.leader
        if self.done:
            return None
        message = entry.message
        entry.logged = REPLICATED
        deadline = 0 if expires_in is None else math.ceil((leader.wall_clock() + expires_in) * 1000)
        end = leader.append((ENQUEUE, entry.seq, message.exchange, message.routing_key,
                             message.properties_raw, message.body, deadline))
        if not end:
            return None  # deposed: a publish it still takes is nacked
        ticket = leader.gate.ticket()
        leader.tickets.append((end, ticket))
        return ticket

    def delivered(self, entry: Entry) -> None:
        if not self.done:
            self.leader.append((DELIVERED, entry.seq))

    def settled(self, entries: Sequence[Entry]) -> None:
        if entries and not self.done:
            self.leader.append((SETTLED, [entry.seq for entry in entries]))

    def returned(self, entries: Sequence[Entry]) -> None:
        if entries and not self.done:
            self.leader.append((RETURNED, [entry.seq for entry in entries]))

    def removed(self, entries: Sequence[Entry], reason: str) -> None:
        if entries and not self.done:
            self.leader.append((SETTLED, [entry.seq for entry in entries]))

    def dead_lettering(self, entries: Sequence[Entry], reason: str) -> None:
        # Held for the targets: a new leader forwards them (and does not make them ready again).
        if entries and not self.done:
            self.leader.append((DEAD_LETTERING, [entry.seq for entry in entries], reason))

    def removed_range(self, first: int, last: int, reason: str) -> None:
        if not self.done:  # as a settled range: the replication log's records carry no reason yet
            self.leader.append((SETTLED_RANGE, first, last))

    def removed_seqs(self, seqs: Sequence[int], reason: str) -> None:
        self.settled_seqs(seqs)  # the replication log's records carry no reason yet

    def settled_seqs(self, seqs: Sequence[int]) -> None:
        if seqs and not self.done:
            self.leader.append((SETTLED, list(seqs)))

    def barrier(self) -> int | None:
        """A gate ticket released once every record logged so far is held as a confirm's would be (what
        a settlement from another node waits for before it is answered: broker/cluster/remote.py); 0 if
        that holds already, None if this node no longer leads the queue."""
        leader = self.leader
        if self.done:
            return 0  # deleted: nothing to keep
        if not leader.active:
            return None
        end = leader.replica.end
        if end <= leader.committed:
            return 0
        ticket = leader.gate.ticket()
        leader.tickets.append((end, ticket))
        return ticket

    def deleted(self) -> None:
        if not self.done:
            self.leader.append((DELETED,))
            self.done = True


class NotLeaderJournal(Journal):
    """A replicated queue's journal on a node that does not lead it: nothing is written, and a publish it
    takes is nacked (its confirm would otherwise promise what no replica holds)."""

    __slots__ = ()

    def enqueued(self, entry: Entry, expires_in: float | None = None) -> int | None:
        return None
