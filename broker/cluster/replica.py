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

`ReplicaLog` keeps the epochs' start offsets (Kafka's leader-epoch cache, which truncation after a leader
change uses), the state at its base offset and the entries since, so that it can truncate to any offset
from its base on and serve any follower that far behind; past that a follower gets a snapshot.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

ENQUEUE = 1
DELIVERED = 2
SETTLED = 3
RETURNED = 4
SETTLED_RANGE = 5
DELETED = 6
DEAD_LETTERING = 7

Record = tuple[Any, ...]
LogEntry = tuple[int, Record]  # (epoch, record)

# Entries kept behind the state before the base moves up (a follower further behind gets a snapshot):
# the default of cluster.replica_log_entries.
TAIL_LIMIT = 100_000


class Held:
    """One message a replica holds."""

    __slots__ = ("exchange", "routing_key", "properties_raw", "body", "deadline", "delivered", "returns",
                 "dead_lettering")

    def __init__(self, exchange: str, routing_key: str, properties_raw: bytes, body: bytes, deadline: int = 0,
                 delivered: bool = False, returns: int = 0, dead_lettering: str = "") -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties_raw = properties_raw
        self.body = body
        self.deadline = deadline
        self.delivered = delivered
        self.returns = returns
        # Why it was dead-lettered at least once ("": it was not): held for its targets, not ready.
        self.dead_lettering = dead_lettering

    def copy(self) -> Held:
        return Held(self.exchange, self.routing_key, self.properties_raw, self.body, self.deadline,
                    self.delivered, self.returns, self.dead_lettering)


@dataclass
class ReplicaState:
    """The queue's messages by seq (in seq order: seqs only grow), and the next seq to number from."""

    held: dict[int, Held] = field(default_factory=dict)
    next_seq: int = 1
    deleted: bool = False

    def apply(self, record: Record) -> None:
        kind = record[0]
        held = self.held
        if kind == ENQUEUE:
            seq = record[1]
            held[seq] = Held(record[2], record[3], record[4], record[5], record[6])
            if seq >= self.next_seq:
                self.next_seq = seq + 1
            self.deleted = False  # declared again after a delete: the same log goes on
        elif kind == DELIVERED:
            item = held.get(record[1])
            if item is not None:
                item.delivered = True
        elif kind == SETTLED:
            for seq in record[1]:
                held.pop(seq, None)
        elif kind == RETURNED:
            for seq in record[1]:
                item = held.get(seq)
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
                item = held.get(seq)
                if item is not None:
                    item.dead_lettering = record[2]
        else:
            raise ValueError(f"unknown replica record kind {kind!r}")

    def copy(self) -> ReplicaState:
        held = {seq: item.copy() for seq, item in self.held.items()}
        return ReplicaState(held, self.next_seq, self.deleted)


class ReplicaLog:
    def __init__(self, tail_limit: int = TAIL_LIMIT) -> None:
        self.tail_limit = tail_limit
        self.epochs: list[tuple[int, int]] = []  # (epoch, offset of its first entry), ascending
        self.base = 0
        self.base_state = ReplicaState()
        self.tail: list[LogEntry] = []
        self.state = ReplicaState()
        # The newest epoch any leader stamped a request with: an older one is refused.
        self.newest_epoch = 0

    @property
    def end(self) -> int:
        return self.base + len(self.tail)

    @property
    def last_epoch(self) -> int:
        return self.epochs[-1][0] if self.epochs else 0

    def append(self, epoch: int, record: Record) -> int:
        """Add an entry; returns its offset."""
        offset = self.end
        if not self.epochs or epoch > self.epochs[-1][0]:
            self.epochs.append((epoch, offset))
        self.tail.append((epoch, record))
        self.state.apply(record)
        return offset

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

    def truncate(self, offset: int) -> bool:
        """Drop the entries from `offset` on. False when `offset` is below the base (a snapshot is needed)."""
        if offset >= self.end:
            return True
        if offset < self.base:
            return False
        self.tail = self.tail[: offset - self.base]
        state = self.base_state.copy()
        for _, record in self.tail:
            state.apply(record)
        self.state = state
        self.epochs = [(epoch, start) for epoch, start in self.epochs if start < offset]
        return True

    def entries_from(self, offset: int, max_bytes: int) -> list[LogEntry]:
        """Entries from `offset` (not below the base), about `max_bytes` of them, at least one."""
        out: list[LogEntry] = []
        size = 0
        tail = self.tail
        for index in range(offset - self.base, len(tail)):  # no slice: the tail may be long
            entry = tail[index]
            out.append(entry)
            size += record_size(entry[1])
            if size >= max_bytes:
                break
        return out

    def compact(self) -> bool:
        """Move the base up to the end once the tail is long (a follower behind it then catches up from
        a snapshot). True if it moved."""
        if len(self.tail) <= self.tail_limit:
            return False
        self.base_state = self.state.copy()
        self.base = self.end
        self.tail = []
        self.epochs = self.epochs[-1:]  # the current epoch; its start may lie below the base now
        return True

    def install(self, end: int, epochs: list[tuple[int, int]], state: ReplicaState) -> None:
        """A snapshot from the leader: this replica holds exactly its state, at offset `end`."""
        self.base = end
        self.base_state = state.copy()
        self.state = state
        self.tail = []
        self.epochs = list(epochs)


# ---- encoding (peer requests and the replica file) -----------------------------------------------

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ENTRY_HEAD = struct.Struct(">BQ")  # kind, epoch
_ENQUEUE = struct.Struct(">QQHHII")  # seq, deadline, lengths of exchange, routing key, properties, body


def record_size(record: Record) -> int:
    if record[0] == ENQUEUE:
        return 40 + len(record[4]) + len(record[5])
    if record[0] in (SETTLED, RETURNED):
        return 16 + 8 * len(record[1])
    if record[0] == DEAD_LETTERING:
        return 16 + 8 * len(record[1]) + len(record[2])
    return 24


def encode_entries(entries: Iterable[LogEntry]) -> bytes:
    parts: list[bytes] = []
    append = parts.append
    for epoch, record in entries:
        kind = record[0]
        append(_ENTRY_HEAD.pack(kind, epoch))
        if kind == ENQUEUE:
            exchange, key = record[2].encode(), record[3].encode()
            append(_ENQUEUE.pack(record[1], record[6], len(exchange), len(key), len(record[4]),
                                 len(record[5])))
            parts += (exchange, key, record[4], record[5])
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


def decode_entries(data: bytes | memoryview) -> Iterator[LogEntry]:
    view = memoryview(data)
    at = 0
    end = len(view)
    while at < end:
        kind, epoch = _ENTRY_HEAD.unpack_from(view, at)
        at += _ENTRY_HEAD.size
        record: Record
        if kind == ENQUEUE:
            seq, deadline, le, lk, lp, lb = _ENQUEUE.unpack_from(view, at)
            at += _ENQUEUE.size
            exchange = bytes(view[at:at + le]).decode()
            at += le
            key = bytes(view[at:at + lk]).decode()
            at += lk
            properties = bytes(view[at:at + lp])
            at += lp
            body = bytes(view[at:at + lb])
            at += lb
            record = (ENQUEUE, seq, exchange, key, properties, body, deadline)
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


def encode_snapshot(end: int, epochs: list[tuple[int, int]], state: ReplicaState) -> bytes:
    """The state at offset `end`: epochs, next seq, and each message with its flags."""
    parts = [_U64.pack(end), _U32.pack(len(epochs))]
    parts += [_U64.pack(epoch) + _U64.pack(start) for epoch, start in epochs]
    parts.append(_U64.pack(state.next_seq) + _U8.pack(int(state.deleted)) + _U32.pack(len(state.held)))
    for seq, item in state.held.items():
        exchange, key = item.exchange.encode(), item.routing_key.encode()
        parts.append(_ENQUEUE.pack(seq, item.deadline, len(exchange), len(key), len(item.properties_raw),
                                   len(item.body)))
        parts += (exchange, key, item.properties_raw, item.body)
        parts.append(_U8.pack(int(item.delivered)) + _U32.pack(item.returns) + _str8(item.dead_lettering))
    return b"".join(parts)


def decode_snapshot(data: bytes | memoryview) -> tuple[int, list[tuple[int, int]], ReplicaState]:
    view = memoryview(data)
    (end,) = _U64.unpack_from(view, 0)
    (count,) = _U32.unpack_from(view, 8)
    at = 12
    epochs = []
    for _ in range(count):
        epochs.append((_U64.unpack_from(view, at)[0], _U64.unpack_from(view, at + 8)[0]))
        at += 16
    (next_seq,) = _U64.unpack_from(view, at)
    deleted = bool(view[at + 8])
    (held_count,) = _U32.unpack_from(view, at + 9)
    at += 13
    state = ReplicaState(next_seq=next_seq, deleted=deleted)
    for _ in range(held_count):
        seq, deadline, le, lk, lp, lb = _ENQUEUE.unpack_from(view, at)
        at += _ENQUEUE.size
        exchange = bytes(view[at:at + le]).decode()
        at += le
        key = bytes(view[at:at + lk]).decode()
        at += lk
        properties = bytes(view[at:at + lp])
        at += lp
        body = bytes(view[at:at + lb])
        at += lb
        delivered = bool(view[at])
        (returns,) = _U32.unpack_from(view, at + 1)
        dead_lettering, at = _read_str8(view, at + 5)
        state.held[seq] = Held(exchange, key, properties, body, deadline, delivered, returns, dead_lettering)
    return end, epochs, state


def _str8(text: str) -> bytes:
    raw = text.encode()
    return _U8.pack(len(raw)) + raw


def _read_str8(view: memoryview, at: int) -> tuple[str, int]:
    """A short string at `at`, and the offset after it."""
    size = view[at]
    if at + 1 + size > len(view):
        raise ValueError("truncated replica record")
    return bytes(view[at + 1:at + 1 + size]).decode(), at + 1 + size
