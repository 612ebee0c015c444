"""A replicated queue's log and the state it builds, sans-IO: the same on the leader and on every follower.

The log is the leader's journal records (broker/queues/journal.py), each stamped with the epoch of the
leader that wrote it and numbered by its offset (0, 1, ...). Applying them in order gives every replica
the same messages, with the same flags: which were ever delivered (they come back redelivered=true after
a leader change) and how often each came back (a quorum queue's delivery count).

Records (tuples, kind first):

    (ENQUEUE, seq, exchange, routing_key, properties_raw, body, deadline)
                                                                   every message (all are persistent);
                                                                   deadline: its TTL's end, wall-clock ms
                                                                   since the epoch (0: none)
    (DELIVERED, seq)                                               first delivery
    (SETTLED, seqs)                                                acked, expired, dropped, dead-lettered
    (RETURNED, seqs)                                               requeued: redelivered, one more return
    (SETTLED_RANGE, first, last)                                   a purged chunk of paged-out messages
    (DELETED,)                                                     the queue is gone
    (DEAD_LETTERING, seqs, reason)                                 dead-lettered at least once: held
                                                                   (not ready) until every target has a
                                                                   copy, then SETTLED
    (ENQUEUE_AT, seq, at, size, properties_size, deadline)         an ENQUEUE whose message is only on
                                                                   disk (in the replica files, at `at`):
                                                                   in memory and in files, never shipped

`ReplicaLog` keeps the epochs' start offsets (Kafka's leader-epoch cache, which truncation after a leader
change uses), the state at its base offset and the entries since, so that it can truncate to any offset
from its base on and serve any follower that far behind; past that a follower gets a snapshot.

Messages are on disk once their replica file is synced (broker/cluster/replica_file.py: each has a
location there, `at`, that never changes), and from then on a replica keeps no body in memory:
`ReplicaLog.spill` drops a held message's content, keeping its location, sizes, deadline and flags (as one
packed int when it has none of the last two), and turns the tail's older ENQUEUE records into ENQUEUE_AT
ones, keeping only its newest `tail_bodies` bytes of bodies whole (what shipping usually sends; older
entries are read back from the files). So a replica holds about 180 bytes a message in memory, whatever
the bodies; the leader's own queue holds its ready messages within the node's memory budget like any
queue (roles.build_leader_queue).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from leveret.broker.store.records import REASONS

ENQUEUE = 1
DELIVERED = 2
SETTLED = 3
RETURNED = 4
SETTLED_RANGE = 5
DELETED = 6
DEAD_LETTERING = 7
ENQUEUE_AT = 8

_versions = itertools.count(1)

# A message's location: the generation of its replica file, then the byte offset of its record there.
GENERATION_SHIFT = 40


def location(generation: int, offset: int) -> int:
    return generation << GENERATION_SHIFT | offset


def split_location(at: int) -> tuple[int, int]:
    return at >> GENERATION_SHIFT, at & ((1 << GENERATION_SHIFT) - 1)

Record = tuple[Any, ...]
LogEntry = tuple[int, Record]  # (epoch, record)

# Entries kept behind the state before the base moves up (a follower further behind gets a snapshot):
# the default of cluster.replica_log_entries.
TAIL_LIMIT = 100_000
# Bodies the tail keeps whole once they are on disk (the newest): what shipping usually sends (at most;
# an eighth of the node's memory budget when that is less).
TAIL_BODIES = 4 * 1024 * 1024


class Held:
    """One message a replica holds: its content while in memory (`body` not None), else its location in
    the replica files (`at`) and sizes. `version`: the state that owns it (see ReplicaState.copy)."""

    __slots__ = ("exchange", "routing_key", "properties_raw", "body", "deadline", "delivered", "returns",
                 "at", "size", "properties_size", "version", "dead_lettering")

    def __init__(self, exchange: str | None, routing_key: str | None, properties_raw: bytes | None,
                 body: bytes | None, deadline: int = 0, delivered: bool = False, returns: int = 0,
                 at: int = 0, size: int = 0, properties_size: int = 0, version: int = 0,
                 dead_lettering: str = "") -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties_raw = properties_raw
        self.body = body
        self.deadline = deadline
        self.delivered = delivered
        self.returns = returns
        self.at = at
        if body is not None and properties_raw is not None:
            size, properties_size = len(body), len(properties_raw)
        self.size = size
        self.properties_size = properties_size
        self.version = version
        # Why it was dead-lettered at least once ("": it was not): held for its targets, not ready.
        self.dead_lettering = dead_lettering

    def copy(self, version: int) -> Held:
        return Held(self.exchange, self.routing_key, self.properties_raw, self.body, self.deadline,
                    self.delivered, self.returns, self.at, self.size, self.properties_size, version,
                    self.dead_lettering)

    def spill(self, at: int) -> None:
        """Its message is on disk at `at`: the content leaves memory."""
        if self.at == 0:
            self.at = at
        self.exchange = self.routing_key = self.properties_raw = self.body = None

    @property
    def plain(self) -> bool:
        """On disk, never delivered, no deadline: kept as a packed int (see `pack`)."""
        return self.body is None and self.at != 0 and not self.delivered and not self.returns \
            and not self.deadline and not self.dead_lettering


# Most messages a replica holds are on disk, never delivered, without a deadline: each is kept as one int
# (its location, body size and properties size) instead of a Held, a third of the memory.
_LOW = (1 << 64) - 1
_SIZE = (1 << 32) - 1


def pack(item: Held) -> int:
    return item.at | item.size << 64 | item.properties_size << 96


def unpack(value: int, version: int = 0) -> Held:
    return Held(None, None, None, None, at=value & _LOW, size=(value >> 64) & _SIZE,
                properties_size=value >> 96, version=version)


def compact(item: Held) -> Held | int:
    return pack(item) if item.plain else item


class _HeldView(Mapping[int, Held]):
    """A state's messages as Held objects (packed ones unpacked on access): for reading."""

    __slots__ = ("_messages",)

    def __init__(self, messages: dict[int, Held | int]) -> None:
        self._messages = messages

    def __getitem__(self, seq: int) -> Held:
        item = self._messages[seq]
        return unpack(item) if type(item) is int else item  # type: ignore[return-value]

    def __iter__(self) -> Iterator[int]:
        return iter(self._messages)

    def __len__(self) -> int:
        return len(self._messages)


@dataclass
class ReplicaState:
    """The queue's messages by seq (in seq order: seqs only grow), and the next seq to number from.

    Two states may share Held objects (`copy`, for the log's base state): each changes only those it owns
    (its `version`), copying a shared one first."""

    messages: dict[int, Held | int] = field(default_factory=dict)  # by seq; int: packed (see `pack`)
    next_seq: int = 1
    deleted: bool = False
    version: int = field(default_factory=lambda: next(_versions))

    @property
    def held(self) -> Mapping[int, Held]:
        """The messages as Held objects, for reading."""
        return _HeldView(self.messages)

    def _owned(self, seq: int) -> Held | None:
        item = self.messages.get(seq)
        if type(item) is int:
            item = self.messages[seq] = unpack(item, self.version)
        elif item is not None and item.version != self.version:  # type: ignore[union-attr]
            item = self.messages[seq] = item.copy(self.version)  # type: ignore[union-attr]
        return item  # type: ignore[return-value]

    def spill(self, seq: int, at: int) -> None:
        """Message `seq` is on disk at `at`: its content leaves memory (a plain one is packed)."""
        item = self.messages.get(seq)
        if item is None or type(item) is int:
            return
        if item.body is not None:  # type: ignore[union-attr]
            item.spill(at)  # type: ignore[union-attr]
        if item.plain:  # type: ignore[union-attr]
            self.messages[seq] = pack(item)  # type: ignore[arg-type]

    def apply(self, record: Record) -> None:
        kind = record[0]
        held = self.messages
        if kind == ENQUEUE or kind == ENQUEUE_AT:
            seq = record[1]
            if kind == ENQUEUE:
                held[seq] = Held(record[2], record[3], record[4], record[5], record[6], version=self.version)
            elif not record[5]:
                held[seq] = record[2] | record[3] << 64 | record[4] << 96  # pack: on disk, plain
            else:
                held[seq] = Held(None, None, None, None, record[5], at=record[2], size=record[3],
                                 properties_size=record[4], version=self.version)
            if seq >= self.next_seq:
                self.next_seq = seq + 1
            self.deleted = False  # declared again after a delete: the same log goes on
        elif kind == DELIVERED:
            item = self._owned(record[1])
            if item is not None:
                item.delivered = True
        elif kind == SETTLED:
            for seq in record[1]:
                held.pop(seq, None)
        elif kind == RETURNED:
            for seq in record[1]:
                item = self._owned(seq)
                if item is not None:
                    item.delivered = True
                    item.returns += 1
        elif kind == SETTLED_RANGE:
            first, last = record[1], record[2]
            if last - first < len(held):
                for seq in range(first, last + 1):
                    held.pop(seq, None)
            else:
                for seq in [s for s in held if first <= s <= last]:
                    del held[seq]
        elif kind == DELETED:
            held.clear()
            self.deleted = True
        elif kind == DEAD_LETTERING:
            for seq in record[1]:
                item = self._owned(seq)
                if item is not None:
                    item.dead_lettering = record[2]
        else:
            raise ValueError(f"unknown replica record kind {kind!r}")

    def copy(self) -> ReplicaState:
        """A copy sharing the messages (about 40 bytes a message): each side copies one before changing
        its flags."""
        self.version = next(_versions)
        return ReplicaState(dict(self.messages), self.next_seq, self.deleted)

    @property
    def resident(self) -> int:
        """How many held messages still have their content in memory (not on disk yet)."""
        messages = self.messages.values()
        return sum(1 for item in messages if not isinstance(item, int) and item.body is not None)


class ReplicaLog:
    def __init__(self, tail_limit: int = TAIL_LIMIT, tail_bodies: int = TAIL_BODIES) -> None:
        self.tail_limit = tail_limit
        self.tail_bodies = tail_bodies
        self.epochs: list[tuple[int, int]] = []  # (epoch, offset of its first entry), ascending
        self.base = 0
        self.base_state = ReplicaState()
        self.tail: list[LogEntry] = []
        # The last entries before the base, kept at a compaction for shipping only (never to truncate
        # to): followers in step but not sent everything yet go on from them instead of a snapshot.
        self.kept: list[LogEntry] = []
        # Each tail entry's message location once it is on disk (0: not yet, or not an enqueue).
        self.tail_at: list[int] = []
        self._whole_from = 0  # tail entries before this index hold no body (or are not enqueues)
        self._whole_bytes = 0  # the bodies of the tail's on-disk ENQUEUE records from there on
        self.state = ReplicaState()
        # The newest epoch any leader stamped a request with: an older one is refused.
        self.newest_epoch = 0
        # The offset each truncation cut the log at, in order: a write taken before one of them must
        # not locate the messages of entries it dropped (see `spill`).
        self.truncations: list[int] = []

    @property
    def end(self) -> int:
        return self.base + len(self.tail)

    @property
    def ship_base(self) -> int:
        """The first offset `entries_from` can give (a follower sent up to below it needs a snapshot)."""
        return self.base - len(self.kept)

    @property
    def last_epoch(self) -> int:
        return self.epochs[-1][0] if self.epochs else 0

    def append(self, epoch: int, record: Record) -> int:
        """Add an entry; returns its offset."""
        offset = self.end
        if not self.epochs or epoch > self.epochs[-1][0]:
            self.epochs.append((epoch, offset))
        self.tail.append((epoch, record))
        self.tail_at.append(0)
        self.state.apply(record)
        return offset

    def spill(self, located: Iterable[tuple[int, int, int]], since: int | None = None) -> None:
        """Messages now on disk: (seq, location, offset of its tail entry or -1). Their content leaves the
        states; the tail keeps the newest `tail_bodies` bytes of bodies whole. `since`: how many
        truncations there were when the write was taken; an entry a later one dropped is skipped, since
        its seq may be enqueued again by the new leader, with another message."""
        if since is not None and since < len(self.truncations):
            cut = min(self.truncations[since:])
            located = [item for item in located if item[2] < cut]
        state, base_state = self.state, self.base_state
        tail, tail_at, base = self.tail, self.tail_at, self.base
        for seq, at, offset in located:
            state.spill(seq, at)
            base_state.spill(seq, at)
            index = offset - base
            if 0 <= index < len(tail) and tail[index][1][0] == ENQUEUE and tail[index][1][1] == seq:
                tail_at[index] = at
                if index >= self._whole_from:
                    self._whole_bytes += len(tail[index][1][5])
        self._strip()

    def _strip(self) -> None:
        """The tail's oldest on-disk ENQUEUE records past `tail_bodies` bytes become ENQUEUE_AT ones."""
        tail, tail_at = self.tail, self.tail_at
        index = self._whole_from
        while self._whole_bytes > self.tail_bodies and index < len(tail):
            epoch, record = tail[index]
            if record[0] == ENQUEUE:
                at = tail_at[index]
                if not at:
                    break  # not on disk yet (written in order: nor is anything after it)
                self._whole_bytes -= len(record[5])
                tail[index] = (epoch, (ENQUEUE_AT, record[1], at, len(record[5]), len(record[4]), record[6]))
            index += 1
        self._whole_from = index

    def start_epoch(self, epoch: int) -> None:
        """A new leader's epoch begins at the current end (even before its first entry)."""
        if not self.epochs or epoch > self.epochs[-1][0]:
            self.epochs.append((epoch, self.end))
        self.newest_epoch = max(self.newest_epoch, epoch)

    def end_offset_for(self, epoch: int) -> int:
        """Kafka's rule: where `epoch` ends in this log, i.e. the first offset of the first later epoch
        (this log's end if none is later). A follower whose last epoch is `epoch` truncates to this."""
        for known, start in self.epochs:
            if known > epoch:
                return start
        return self.end

    def catch_up_point(self, end: int, last_epoch: int, base: int) -> int | None:
        """Where a follower whose log ends at `end`, with `last_epoch` its last epoch and `base` its base,
        is sent this log from (Kafka's rule: it truncates to there first if that is below its end); None
        when it needs a snapshot: the point is below this log's base (those entries are gone here) or
        below the follower's own (it cannot truncate to there: it compacted past where the two logs
        part, e.g. holding entries of a deposed leader that this one never got)."""
        point = min(end, self.end_offset_for(last_epoch))
        if point < self.ship_base or point < base:
            return None
        return point

    def state_at(self, offset: int) -> ReplicaState:
        """The state of the log up to `offset` (from the base on to the end): the base state with the
        tail replayed on it, slow for a long tail (about a second on a CPU per million entries), so a
        server runs it in a worker thread, changing nothing in the log meanwhile. The result is only
        valid for the log as it was."""
        state = self.base_state.copy()
        tail, tail_at = self.tail, self.tail_at
        for index in range(offset - self.base):
            record, at = tail[index][1], tail_at[index]
            state.apply(record)
            if at:  # on disk already: as in the state it replaces
                state.spill(record[1], at)
        return state

    def truncate(self, offset: int, state: ReplicaState | None = None) -> bool:
        """Drop the entries from `offset` on (`state`: `state_at(offset)`, if already computed). False
        when `offset` is below the base (a snapshot is needed)."""
        if offset >= self.end:
            return True
        if offset < self.base:
            return False
        if state is None:
            state = self.state_at(offset)
        self.truncations.append(offset)
        keep = offset - self.base
        self.tail = self.tail[:keep]
        self.tail_at = self.tail_at[:keep]
        self._whole_from = min(self._whole_from, keep)
        whole = self._whole_from
        self._whole_bytes = sum(len(record[5]) for (_, record), at in
                                zip(self.tail[whole:], self.tail_at[whole:], strict=True)
                                if at and record[0] == ENQUEUE)
        self.state = state
        self.epochs = [(epoch, start) for epoch, start in self.epochs if start < offset]
        return True

    def entries_from(self, offset: int, max_bytes: int) -> list[LogEntry]:
        """Entries from `offset` (not below `ship_base`), about `max_bytes` of them, at least one. Some
        may be ENQUEUE_AT records, whose messages the caller reads back before shipping them."""
        out: list[LogEntry] = []
        size = 0
        kept = self.kept
        for part, start in ((kept, self.ship_base), (self.tail, self.base)):
            for index in range(max(offset - start, 0), len(part)):  # no slice: the tail may be long
                entry = part[index]
                out.append(entry)
                size += record_size(entry[1])
                if size >= max_bytes:
                    return out
        return out

    def compact(self, keep: int = 0) -> bool:
        """Move the base up to the end once the tail is long (a follower behind it then catches up from
        a snapshot), keeping the last `keep` entries for shipping: a leader's followers in step have not
        been sent the newest ones yet, and would otherwise each need a snapshot at every compaction.
        True if it moved."""
        if len(self.tail) <= self.tail_limit:
            return False
        start = len(self.tail) - min(keep, len(self.tail))
        # Kept messages already on disk are read back from there to be shipped, as older tail entries.
        self.kept = [(epoch, (ENQUEUE_AT, record[1], at, len(record[5]), len(record[4]), record[6]))
                     if at and record[0] == ENQUEUE else (epoch, record)
                     for (epoch, record), at in zip(self.tail[start:], self.tail_at[start:], strict=True)]
        self.base_state = self.state.copy()
        self.base = self.end
        self.tail = []
        self.tail_at = []
        self._whole_from = self._whole_bytes = 0
        self.epochs = self.epochs[-1:]  # the current epoch; its start may lie below the base now
        return True

    def install(self, end: int, epochs: list[tuple[int, int]], state: ReplicaState) -> None:
        """A snapshot from the leader: this replica holds exactly its state, at offset `end`."""
        self.base = end
        self.base_state = state.copy()
        self.state = state
        self.kept = []
        self.tail = []
        self.tail_at = []
        self._whole_from = self._whole_bytes = 0
        self.epochs = list(epochs)

    def generations(self) -> set[int]:
        """The replica files (by generation, see `location`) whose messages the log may still need."""
        return generations_of(self.locations())

    def locations(self) -> Locations:
        """What `generations_of` reads, copied (quickly) so that it can run off the event loop."""
        return (list(self.state.messages.values()), list(self.base_state.messages.values()),
                list(self.tail_at), [record[2] for _, record in (*self.kept, *self.tail)
                                     if record[0] == ENQUEUE_AT])


Locations = tuple[list["Held | int"], list["Held | int"], list[int], list[int]]


def generations_of(locations: Locations) -> set[int]:
    state, base, tail_at, tail_refs = locations
    found: set[int] = set()
    for values in (state, base):
        found.update((item & _LOW if isinstance(item, int) else item.at) >> GENERATION_SHIFT
                     for item in values)
    found.update(at >> GENERATION_SHIFT for at in tail_at if at)
    found.update(at >> GENERATION_SHIFT for at in tail_refs)
    found.discard(0)
    return found


# ---- encoding (peer requests and the replica file) -----------------------------------------------

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ENTRY_HEAD = struct.Struct(">BQ")  # kind, epoch
# A message: seq, deadline, lengths of exchange, routing key, properties, body; then those. A location
# points at one of these, in an ENTRIES or a MESSAGES record of a replica file.
_ENQUEUE = struct.Struct(">QQHHII")
_ENQUEUE_AT = struct.Struct(">QQIIQ")  # seq, location, body size, properties size, deadline
_FLAGS = struct.Struct(">BIB")  # delivered, returns, dead-lettering: after a message of a snapshot
FLAGS_SIZE = _FLAGS.size
_META = struct.Struct(">QBI")  # next seq, deleted, message count
# seq, location, deadline, body size, properties size, delivered, returns, dead-lettering
_REF = struct.Struct(">QQQIIBIB")

Message = tuple[int, str, str, bytes, bytes, int]  # seq, exchange, routing key, properties, body, deadline


def record_size(record: Record) -> int:
    if record[0] == ENQUEUE:
        return 40 + len(record[4]) + len(record[5])
    if record[0] == ENQUEUE_AT:
        return 40 + record[3] + record[4]
    if record[0] in (SETTLED, RETURNED):
        return 16 + 8 * len(record[1])
    if record[0] == DEAD_LETTERING:
        return 16 + 8 * len(record[1]) + len(record[2])
    return 24


def _message(parts: list[bytes], seq: int, exchange: str, routing_key: str, properties: bytes, body: bytes,
             deadline: int) -> None:
    name, key = exchange.encode(), routing_key.encode()
    parts.append(_ENQUEUE.pack(seq, deadline, len(name), len(key), len(properties), len(body)))
    parts += (name, key, properties, body)


def _read_message(view: memoryview, at: int) -> tuple[Message, int]:
    """The message at `at`, and where it ends."""
    seq, deadline, le, lk, lp, lb = _ENQUEUE.unpack_from(view, at)
    at += _ENQUEUE.size
    if at + le + lk + lp + lb > len(view):
        raise ValueError("a replica message runs past its record")
    exchange = bytes(view[at:at + le]).decode()
    at += le
    key = bytes(view[at:at + lk]).decode()
    at += lk
    properties = bytes(view[at:at + lp])
    at += lp
    body = bytes(view[at:at + lb])
    return (seq, exchange, key, properties, body, deadline), at + lb


def message_length(head: bytes) -> int:
    """A message's whole length from its first MESSAGE_HEAD bytes."""
    _, _, le, lk, lp, lb = _ENQUEUE.unpack_from(head, 0)
    return _ENQUEUE.size + le + lk + lp + lb


MESSAGE_HEAD = _ENQUEUE.size


def decode_message(data: bytes | memoryview) -> Message:
    return _read_message(memoryview(data), 0)[0]


def encode_entries(entries: Iterable[LogEntry], positions: list[int] | None = None) -> bytes:
    """`positions` gets where each entry's message starts in the result (-1: not an ENQUEUE)."""
    parts: list[bytes] = []
    append = parts.append
    length = 0  # of parts[:mark], kept only for `positions`
    mark = 0
    for epoch, record in entries:
        kind = record[0]
        if positions is not None:
            length += sum(map(len, parts[mark:]))
            mark = len(parts)
            positions.append(length + _ENTRY_HEAD.size if kind == ENQUEUE else -1)
        append(_ENTRY_HEAD.pack(kind, epoch))
        if kind == ENQUEUE:
            _message(parts, record[1], record[2], record[3], record[4], record[5], record[6])
        elif kind == ENQUEUE_AT:
            append(_ENQUEUE_AT.pack(*record[1:]))
        elif kind == DELIVERED:
            append(_U64.pack(record[1]))
        elif kind in (SETTLED, RETURNED, DEAD_LETTERING):
            seqs = list(record[1])
            append(_U32.pack(len(seqs)))
            append(struct.pack(f">{len(seqs)}Q", *seqs))
            if kind == DEAD_LETTERING:
                append(_str8(record[2]))
        elif kind == SETTLED_RANGE:
            append(_U64.pack(record[1]) + _U64.pack(record[2]))
    return b"".join(parts)


def decode_entries(data: bytes | memoryview, positions: list[int] | None = None) -> Iterator[LogEntry]:
    """The entries in `data`; `positions` gets each one's message position in `data` (ENQUEUE's: where
    its message starts; -1 for the other kinds)."""
    view = memoryview(data)
    at = 0
    end = len(view)
    while at < end:
        kind, epoch = _ENTRY_HEAD.unpack_from(view, at)
        at += _ENTRY_HEAD.size
        record: Record
        if positions is not None:
            positions.append(at if kind == ENQUEUE else -1)
        if kind == ENQUEUE:
            (seq, exchange, key, properties, body, deadline), at = _read_message(view, at)
            record = (ENQUEUE, seq, exchange, key, properties, body, deadline)
        elif kind == ENQUEUE_AT:
            record = (ENQUEUE_AT, *_ENQUEUE_AT.unpack_from(view, at))
            at += _ENQUEUE_AT.size
        elif kind == DELIVERED:
            record = (DELIVERED, _U64.unpack_from(view, at)[0])
            at += 8
        elif kind in (SETTLED, RETURNED, DEAD_LETTERING):
            (count,) = _U32.unpack_from(view, at)
            at += 4
            seqs = list(struct.unpack_from(f">{count}Q", view, at))
            at += 8 * count
            if kind == DEAD_LETTERING:
                reason, at = _read_str8(view, at)
                record = (kind, seqs, reason)
            else:
                record = (kind, seqs)
        elif kind == SETTLED_RANGE:
            record = (SETTLED_RANGE, _U64.unpack_from(view, at)[0], _U64.unpack_from(view, at + 8)[0])
            at += 16
        elif kind == DELETED:
            record = (DELETED,)
        else:
            raise ValueError(f"unknown replica record kind {kind}")
        yield epoch, record


# A snapshot is streamed: its head (offset, epochs, next seq), then its messages in parts of about a MiB,
# each message with its flags, so that neither side holds a large queue in memory at once.

def encode_snapshot_head(end: int, epochs: list[tuple[int, int]], state: ReplicaState) -> bytes:
    parts = [_U64.pack(end), _U32.pack(len(epochs))]
    parts += [_U64.pack(epoch) + _U64.pack(start) for epoch, start in epochs]
    parts.append(_META.pack(state.next_seq, int(state.deleted), len(state.held)))
    return b"".join(parts)


def decode_snapshot_head(data: bytes | memoryview) -> tuple[int, list[tuple[int, int]], ReplicaState, int]:
    """(end, epochs, an empty state with the next seq, how many bytes the head took)."""
    view = memoryview(data)
    (end,) = _U64.unpack_from(view, 0)
    (count,) = _U32.unpack_from(view, 8)
    at = 12
    epochs = []
    for _ in range(count):
        epochs.append((_U64.unpack_from(view, at)[0], _U64.unpack_from(view, at + 8)[0]))
        at += 16
    next_seq, deleted, _ = _META.unpack_from(view, at)
    return end, epochs, ReplicaState(next_seq=next_seq, deleted=bool(deleted)), at + _META.size


def encode_messages(messages: Iterable[tuple[Message, bool, int, str]]) -> bytes:
    """Messages of a snapshot, each with its delivered flag, return count and dead-lettering reason."""
    parts: list[bytes] = []
    for (seq, exchange, key, properties, body, deadline), delivered, returns, reason in messages:
        _message(parts, seq, exchange, key, properties, body, deadline)
        parts.append(_FLAGS.pack(int(delivered), returns, reason_code(reason)))
    return b"".join(parts)


def reason_code(reason: str) -> int:
    """A dead-lettering reason as a byte: 0 none, else 1 + its index in the store's REASONS."""
    return REASONS.index(reason) + 1 if reason else 0


def _reason(code: int) -> str:
    return REASONS[code - 1] if code else ""


def _str8(text: str) -> bytes:
    raw = text.encode()
    return _U8.pack(len(raw)) + raw


def _read_str8(view: memoryview, at: int) -> tuple[str, int]:
    """A short string at `at`, and the offset after it."""
    size = view[at]
    if at + 1 + size > len(view):
        raise ValueError("truncated replica record")
    return bytes(view[at + 1:at + 1 + size]).decode(), at + 1 + size


def decode_messages(data: bytes | memoryview) -> Iterator[tuple[int, int, Held]]:
    """(position, seq, message) for each message in `data` (from encode_messages): each without its
    content, not located yet (the caller writes `data` to its file, then locates them)."""
    view = memoryview(data)
    at = 0
    while at < len(view):
        start = at
        (seq, _, _, properties, body, deadline), at = _read_message(view, at)
        delivered, returns, reason = _FLAGS.unpack_from(view, at)
        at += _FLAGS.size
        yield start, seq, Held(None, None, None, None, deadline, bool(delivered), returns,
                               size=len(body), properties_size=len(properties),
                               dead_lettering=_reason(reason))


REF_SIZE = _REF.size


def encode_refs(
    end: int, epochs: list[tuple[int, int]], state: ReplicaState, placed: dict[int, int]
) -> bytes:
    """A snapshot in a replica file: the state with each message by its location (`placed`: those
    being written with it, not located yet)."""
    return encode_snapshot_head(end, epochs, state) + encode_ref_list(state, placed)


def encode_ref_list(state: ReplicaState, placed: dict[int, int]) -> bytes:
    """The messages of `encode_refs`, REF_SIZE bytes each (slow for a large queue: off the event loop)."""
    parts = []
    ref = _REF.pack
    for seq, item in state.messages.items():
        if isinstance(item, int):
            parts.append(ref(seq, item & _LOW, 0, (item >> 64) & _SIZE, item >> 96, 0, 0, 0))
            continue
        parts.append(ref(seq, item.at or placed[seq], item.deadline, item.size, item.properties_size,
                         int(item.delivered), item.returns, reason_code(item.dead_lettering)))
    return b"".join(parts)


def decode_refs(data: bytes | memoryview) -> tuple[int, list[tuple[int, int]], ReplicaState]:
    end, epochs, state, at = decode_snapshot_head(data)
    view = memoryview(data)
    (count,) = _U32.unpack_from(view, at - 4)
    held = state.messages
    version = state.version
    for seq, where, deadline, size, properties_size, delivered, returns, reason in _REF.iter_unpack(
            view[at:at + count * _REF.size]):
        held[seq] = compact(Held(None, None, None, None, deadline, bool(delivered), returns, where, size,
                                 properties_size, version, _reason(reason)))
    return end, epochs, state
