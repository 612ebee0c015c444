"""One durable queue's log: its enqueues, settles and deliveries, in segment files of its own directory.

Appends only frame records into an in-memory buffer and update the bookkeeping; the writing and the
fsync happen in a `SyncBatch` (group_commit.py), so every method here is cheap enough for the event loop
except `recover` and `delete`, which read or remove files.

A segment can be deleted when every message it enqueued is settled and no other segment still needs
its settle or delivered records: those refer to messages of older segments, and deleting them before
those older segments are gone would bring settled messages back after a restart. So each segment keeps
`refs`, the older segments its records refer to, and waits until all of them are deleted first.

An enqueue record's location (segment index and offset in one int, see `location`) lets a message paged
out of memory be read back from the log (store/reader.py) instead of being written anywhere else.
"""

from __future__ import annotations

import gc
import logging
import shutil
import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import records, segments
from .records import (
    DEAD_LETTERING,
    DELIVERED,
    ENQUEUE,
    ENQUEUE_EXPIRING,
    ENQUEUES,
    EPOCH,
    REMOVED,
    RETURNED,
    SETTLE,
)

log = logging.getLogger(__name__)

# A location is `segment index << LOCATION_SHIFT | offset`: never 0 (a segment's header comes first), and
# below 2**63 (an array('q') holds it) for 2**23 segments of up to 2**40 bytes.
LOCATION_SHIFT = 40
_OFFSET_MASK = (1 << LOCATION_SHIFT) - 1


def location(index: int, offset: int) -> int:
    return index << LOCATION_SHIFT | offset


def split_location(at: int) -> tuple[int, int]:
    """(segment index, offset) of a location."""
    return at >> LOCATION_SHIFT, at & _OFFSET_MASK


@dataclass(slots=True)
class StoredMessage:
    seq: int
    exchange: str
    routing_key: str
    properties_raw: bytes
    body: bytes
    delivered: bool = False
    deadline: int | None = None  # when it expires (ms since the epoch), if it was logged with one
    location: int = field(default=0, compare=False)  # of its enqueue record


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: recovery makes a million objects that never form cycles,
    and each few thousand would set off a collection over all of them (most of the time, measured)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


# Property flag bit of `expiration` (AMQP basic class): such a message needs its queue's lifecycle.
_EXPIRATION_FLAG = 1 << 8
# Property flag bit of `priority`: only such a message's properties are read for it.
_PRIORITY_FLAG = 1 << 11
_SETTLED, _DELIVERED = 1, 2
# In RecoveredLog.deadlines: a message logged without a deadline.
NO_DEADLINE = -(1 << 63)
# What a kept record costs beyond its body and properties, as the memory budget counts a message
# (queues/paging.py).
KEPT_OVERHEAD = 256

# (seq, exchange, routing key, properties, body) of an enqueue record, as records.decode_enqueue gives it.
Enqueued = tuple[int, str, str, bytes, bytes]


@dataclass(slots=True)
class RecoveredLog:
    """The unsettled messages a log held at open, in seq order, as columns (about 29 bytes a message),
    and the whole records of those the scan could keep within its memory allowance (by position in the
    columns): a durable backlog larger than memory recovers without its bodies (broker/recovery.py keeps
    the head in memory and leaves the rest in the log, paged out), one that fits is not read twice."""

    seqs: array  # 'q'
    locations: array  # 'q': each one's enqueue record (see `location`)
    sizes: array  # 'q': body bytes
    properties: array  # 'I': raw properties bytes (the memory budget counts them, see Message.size)
    delivered: bytearray  # 1: delivered before the restart
    expiring: bool  # some message has an `expiration` property or a deadline
    kept: dict[int, Enqueued] = field(default_factory=dict)
    # 'q': each one's deadline (ms since the epoch, NO_DEADLINE: none), None when no message has one.
    deadlines: array | None = None
    # 'q': how often each came back to the queue (a quorum queue's delivery count), None when none did.
    returns: array | None = None
    # Each one's `priority` property, None when none has one above 0.
    priorities: bytearray | None = None
    # Unsettled messages dead-lettered at least once, held until their targets have them (not in the
    # columns above): (seq, location, reason).
    held: list[tuple[int, int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)

    def deadline(self, index: int) -> int | None:
        """The deadline the message at `index` was logged with, if any."""
        deadlines = self.deadlines
        if deadlines is None or deadlines[index] == NO_DEADLINE:
            return None
        return deadlines[index]


class _Columns:
    """The enqueues read so far, in seq order (seqs only grow within a log), each marked when a later
    record settles or delivers it; looked up by bisection, not a dict, to stay small."""

    def __init__(self, allowance: int) -> None:
        self.seqs = array("q")
        self.locations = array("q")
        self.sizes = array("q")
        self.properties = array("I")
        self.marks = bytearray()
        self.flags = array("l")
        # Made at the first expiring enqueue, so that a log without any costs nothing for it.
        self.deadlines: array | None = None
        self.returns: array | None = None  # likewise, at the first RETURNED record
        self.priorities: bytearray | None = None  # likewise, at the first message with a priority
        self.held: dict[int, str] = {}  # seq -> reason: dead-lettered at least once, not settled yet
        self.kept: dict[int, Enqueued] = {}  # by seq
        # Bytes still allowed in `kept`, as the memory budget counts them: body, raw properties and
        # KEPT_OVERHEAD each.
        self.room = allowance

    def keep(self, record: Enqueued) -> None:
        self.kept[record[0]] = record
        self.room -= len(record[3]) + len(record[4]) + KEPT_OVERHEAD

    def add(self, seq: int, at: int, size: int, flags: int, properties: int, priority: int) -> None:
        seqs = self.seqs
        if priority and self.priorities is None:
            self.priorities = bytearray(len(seqs))
        if seqs and seq <= seqs[-1]:  # never written so, but a log must recover whatever it holds
            self._add_out_of_order(seq, at, size, flags, properties, priority, NO_DEADLINE)
            return
        seqs.append(seq)
        self.locations.append(at)
        self.sizes.append(size)
        self.properties.append(properties)
        self.flags.append(flags)
        self.marks.append(0)
        if self.deadlines is not None:
            self.deadlines.append(NO_DEADLINE)
        if self.returns is not None:
            self.returns.append(0)
        if self.priorities is not None:
            self.priorities.append(priority)

    def add_expiring(
        self, seq: int, at: int, size: int, flags: int, properties: int, priority: int, deadline: int
    ) -> None:
        if self.deadlines is None:
            self.deadlines = array("q", [NO_DEADLINE]) * len(self.seqs)
        seqs = self.seqs
        if seqs and seq <= seqs[-1]:
            if priority and self.priorities is None:
                self.priorities = bytearray(len(seqs))
            self._add_out_of_order(seq, at, size, flags, properties, priority, deadline)
            return
        self.add(seq, at, size, flags, properties, priority)
        self.deadlines[-1] = deadline

    def _add_out_of_order(
        self, seq: int, at: int, size: int, flags: int, properties: int, priority: int, deadline: int
    ) -> None:
        seqs = self.seqs
        deadlines = self.deadlines
        priorities = self.priorities
        index = bisect_left(seqs, seq)
        if index < len(seqs) and seqs[index] == seq:
            self.locations[index], self.sizes[index], self.flags[index] = at, size, flags
            self.properties[index] = properties
            self.marks[index] = 0
            if deadlines is not None:
                deadlines[index] = deadline
            if self.returns is not None:
                self.returns[index] = 0
            if priorities is not None:
                priorities[index] = priority
            return
        seqs.insert(index, seq)
        self.locations.insert(index, at)
        self.sizes.insert(index, size)
        self.properties.insert(index, properties)
        self.flags.insert(index, flags)
        self.marks.insert(index, 0)
        if deadlines is not None:
            deadlines.insert(index, deadline)
        if self.returns is not None:
            self.returns.insert(index, 0)
        if priorities is not None:
            priorities.insert(index, priority)

    def _index(self, seq: int) -> int | None:
        index = bisect_left(self.seqs, seq)
        return index if index < len(self.seqs) and self.seqs[index] == seq else None

    def settle(self, seq: int) -> bool:
        """Mark `seq` settled; whether it was an unsettled message of this log."""
        index = self._index(seq)
        if index is None or self.marks[index] & _SETTLED:
            return False
        self.marks[index] |= _SETTLED
        if self.held:
            self.held.pop(seq, None)
        record = self.kept.pop(seq, None)
        if record is not None:
            self.room += len(record[3]) + len(record[4]) + KEPT_OVERHEAD
        return True

    def deliver(self, seq: int) -> None:
        index = self._index(seq)
        if index is not None:
            self.marks[index] |= _DELIVERED

    def dead_lettering(self, seq: int, reason: str) -> None:
        index = self._index(seq)
        if index is not None and not self.marks[index] & _SETTLED:
            self.held[seq] = reason

    def returned(self, seq: int) -> None:
        """`seq` came back to the queue: redelivered from now on, and one more in its count."""
        index = self._index(seq)
        if index is not None:
            if self.returns is None:
                self.returns = array("q", [0]) * len(self.seqs)
            self.returns[index] += 1
            self.marks[index] |= _DELIVERED

    def unsettled(self) -> RecoveredLog:
        held = self.held
        live = [
            index
            for index, mark in enumerate(self.marks)
            if not mark & _SETTLED and not (held and self.seqs[index] in held)
        ]
        returns = None
        if self.returns is not None:
            returns = array("q", (self.returns[i] for i in live))
        deadlines = None
        if self.deadlines is not None:
            deadlines = array("q", (self.deadlines[i] for i in live))
            if deadlines.count(NO_DEADLINE) == len(deadlines):
                deadlines = None  # the expiring ones are all settled
        priorities = None
        if self.priorities is not None:
            priorities = bytearray(self.priorities[i] for i in live)
        kept = self.kept
        seqs = array("q", (self.seqs[i] for i in live))
        return RecoveredLog(
            seqs,
            array("q", (self.locations[i] for i in live)),
            array("q", (self.sizes[i] for i in live)),
            array("I", (self.properties[i] for i in live)),
            bytearray(self.marks[i] >> 1 for i in live),
            deadlines is not None or any(self.flags[i] & _EXPIRATION_FLAG for i in live),
            {position: kept[seq] for position, seq in enumerate(seqs) if seq in kept} if kept else {},
            deadlines,
            returns if returns is not None and any(returns) else None,
            priorities if priorities is not None and any(priorities) else None,
            [(seq, self.locations[self._index(seq) or 0], reason) for seq, reason in sorted(held.items())],
        )


class Pending:
    """Shared by a store and its logs: the last write position handed out, and the logs holding
    appends not yet taken by a batch."""

    __slots__ = ("position", "logs")

    def __init__(self) -> None:
        self.position = 0
        self.logs: set[QueueLog] = set()


@dataclass(slots=True)
class SegmentWrite:
    """Bytes appended to one segment from `offset` on, not yet written. `sync`: they hold a record
    that must be fsynced (enqueue, settle) or the segment's header (so its directory entry is too).
    `borrowed`: `data` is a large message body written from the message's own buffer, never appended to."""

    segment: int
    offset: int
    data: bytearray | records.Buffer
    sync: bool
    borrowed: bool = False


class _Segment:
    __slots__ = ("index", "first_seq", "last_seq", "live", "refs", "deleting")

    def __init__(self, index: int) -> None:
        self.index = index
        self.first_seq = 0  # 0 until the segment holds an enqueue (seqs start at 1)
        self.last_seq = 0
        self.live = 0  # enqueued here and not settled yet
        self.refs: set[int] = set()  # older segments whose messages this one settles or marks delivered
        self.deleting = False  # handed to a batch for deletion, not confirmed yet


class QueueLog:
    """The durable log of one queue. Call `recover` once before the first append."""

    def __init__(self, directory: Path, pending: Pending, max_segment_size: int) -> None:
        self.directory = directory
        self.last_seq = 0  # the highest seq any record mentions: a queue numbers new messages above it
        self.last_location = 0  # of the latest enqueue record appended
        # The leader epoch appends are made in (0 on a single node), and how many records this queue's
        # log holds: its own position, which EPOCH records keep, so that it can be shipped on its own.
        # (The store's write position, which confirms wait for, counts every queue's appends.)
        self.epoch = 0
        self.position = 0
        self._pending = pending
        self._max_segment_size = max_segment_size
        self._recovered = False
        self._segments: dict[int, _Segment] = {}
        # The segments holding enqueues, ascending, and their first seqs: seq -> segment by bisection.
        self._enqueuing: list[_Segment] = []
        self._firsts: list[int] = []
        self._live: set[int] = set()
        self._active = _Segment(0)
        self._active_size = 0  # bytes in the active segment, written or not; 0: not started
        self._record_offset = 0  # where the latest record went in the active segment
        self._salt = 0
        self._writes: list[SegmentWrite] = []
        self._discarded = False

    # -- appends (event loop) ---------------------------------------------------------------------

    def append_enqueue(self, seq: int, exchange: str, routing_key: str, properties_raw: bytes,
                       body: records.Buffer, deadline: int | None = None) -> int:
        """Record a persistent message, expiring at `deadline` (ms since the epoch) if given; returns its
        write position (durable once the store's `durable_position` reaches it)."""
        if seq <= self.last_seq:
            raise ValueError(f"seq {seq} is not above the last seq {self.last_seq}")
        if deadline is None:
            position = self._append(ENQUEUE, records.enqueue_parts(seq, exchange, routing_key,
                                                                   properties_raw, body), True)
        else:
            position = self._append(ENQUEUE_EXPIRING, records.expiring_enqueue_parts(
                deadline, seq, exchange, routing_key, properties_raw, body), True)
        segment = self._active
        self.last_location = location(segment.index, self._record_offset)
        if not segment.first_seq:
            segment.first_seq = seq
            self._enqueuing.append(segment)
            self._firsts.append(seq)
        segment.last_seq = seq
        segment.live += 1
        self._live.add(seq)
        self.last_seq = seq
        return position

    def append_settle(self, seqs: Iterable[int]) -> int:
        """Record messages gone for good (acked, dropped, dead-lettered). Seqs this log does not hold
        (transient messages, already settled) are ignored. Returns the last write position."""
        live = self._live
        settled = [seq for seq in seqs if seq in live]
        if not settled:
            return self._pending.position
        position = self._append(SETTLE, (records.settle_payload(settled),), True)
        self._forget_live(settled)
        return position

    def _forget_live(self, seqs: list[int]) -> None:
        """`seqs` (live) are settled or removed: their segments may go once nothing else needs them."""
        live = self._live
        active = self._active
        for seq in seqs:
            live.remove(seq)
            segment = self._segment_of(seq)
            assert segment is not None  # a live seq is in an enqueuing segment
            segment.live -= 1
            if segment is not active:
                active.refs.add(segment.index)

    def append_removed(self, seqs: Iterable[int], reason: str) -> int:
        """Record messages the queue removed for `reason` (records.REASONS): gone for good, as settled."""
        live = self._live
        removed = [seq for seq in seqs if seq in live]
        if not removed:
            return self._pending.position
        position = self._append(REMOVED, (records.removed_payload(self.epoch, reason, removed),), True)
        self._forget_live(removed)
        return position

    def append_returned(self, seqs: Iterable[int]) -> int:
        """Record messages back in the queue (nacked or rejected with requeue, or given back by a closed
        channel): they recover as redelivered, with one more in their delivery count."""
        returned = [seq for seq in seqs if seq in self._live]
        if not returned:
            return self._pending.position
        position = self._append(RETURNED, (records.returned_payload(self.epoch, returned),), True)
        active = self._active
        for seq in returned:
            segment = self._segment_of(seq)
            if segment is not None and segment is not active:
                active.refs.add(segment.index)
        return position

    def append_dead_lettering(self, seqs: Iterable[int], reason: str) -> int:
        """Record messages dead-lettered at least once (records.REASONS): held by the queue, not ready,
        until their targets have them and `append_removed` settles them."""
        held = [seq for seq in seqs if seq in self._live]
        if not held:
            return self._pending.position
        position = self._append(DEAD_LETTERING, (records.removed_payload(self.epoch, reason, held),), True)
        active = self._active
        for seq in held:
            segment = self._segment_of(seq)
            if segment is not None and segment is not active:
                active.refs.add(segment.index)
        return position

    def append_delivered(self, seq: int) -> int:
        """Record that a message went to a consumer, so it recovers as redelivered. Not worth an fsync:
        it is written with the next batch and survives a process crash, not a power cut."""
        if seq not in self._live:
            return self._pending.position
        position = self._append(DELIVERED, (records.delivered_payload(seq),), False)
        segment = self._segment_of(seq)
        assert segment is not None  # a live seq is in an enqueuing segment
        if segment is not self._active:
            self._active.refs.add(segment.index)
        return position

    def _append(self, kind: int, parts: tuple[records.Buffer, ...], sync: bool) -> int:
        """Append a record whose payload is `parts`. A large part (a body) is written from where it is."""
        if not self._recovered or self._discarded:
            raise RuntimeError(f"{self.directory}: append before recover() or after discard()")
        size = records.HEADER_SIZE + sum(map(len, parts))
        if self._active_size > segments.HEADER_SIZE and self._active_size + size > self._max_segment_size:
            self._active = _Segment(self._active.index + 1)
            self._active_size = 0
        writes = self._writes
        index = self._active.index
        if not self._active_size:
            segment_header, self._salt = segments.new_header()
            self._segments[index] = self._active
            # Each segment opens with the epoch and the log position of what follows.
            marker = records.epoch_payload(self.epoch, self.position)
            opening = bytearray(segment_header) + records.record_header(EPOCH, marker, self._salt) + marker
            writes.append(SegmentWrite(index, 0, opening, True))
            self._active_size = len(opening)
            self.position += 1
        elif not writes or writes[-1].segment != index or writes[-1].borrowed:
            writes.append(SegmentWrite(index, self._active_size, bytearray(), False))
        write: SegmentWrite | None = writes[-1]
        offset = self._record_offset = self._active_size
        for part in (records.parts_header(kind, parts, self._salt), *parts):
            if len(part) >= segments.LARGE_PART:
                writes.append(SegmentWrite(index, offset, part, sync, borrowed=True))
                write = None
            else:
                if write is None:
                    write = SegmentWrite(index, offset, bytearray(), sync)
                    writes.append(write)
                write.data += part  # type: ignore[operator]  # an open write's data is a bytearray
            offset += len(part)
        if sync:
            writes[-1].sync = True
        self._active_size += size
        self.position += 1
        self._pending.logs.add(self)
        self._pending.position += 1
        return self._pending.position

    def _segment_of(self, seq: int) -> _Segment | None:
        i = bisect_right(self._firsts, seq) - 1
        if i < 0:
            return None
        segment = self._enqueuing[i]
        return segment if seq <= segment.last_seq else None

    # -- group commit (store) ---------------------------------------------------------------------

    def take_writes(self) -> list[SegmentWrite]:
        """Hand the buffered appends to a batch; new appends start new buffers."""
        writes, self._writes = self._writes, []
        self._pending.logs.discard(self)
        return writes

    def restore_writes(self, writes: list[SegmentWrite]) -> None:
        """Put back the writes of a failed batch, ahead of newer appends, for the next batch to retry."""
        if writes and not self._discarded:
            self._writes[:0] = writes
            self._pending.logs.add(self)

    def discard(self) -> None:
        """Drop the buffered appends and refuse new ones: the queue is being deleted."""
        self._discarded = True
        self.take_writes()

    def claim_deletable(self, busy: set[int]) -> list[int]:
        """Segments that can be deleted now (not active, not in `busy`, see module doc), marked as
        being deleted until `deletions_done`."""
        claimed = [segment for segment in self._deletable() if segment.index not in busy]
        for segment in claimed:
            segment.deleting = True
        return [segment.index for segment in claimed]

    def deletions_done(self, deleted: list[int], failed: list[int]) -> None:
        for index in failed:
            self._segments[index].deleting = False
        self._forget(deleted)

    def _deletable(self) -> list[_Segment]:
        exists = self._segments
        return [
            segment
            for index, segment in sorted(exists.items())
            if segment is not self._active
            and not segment.live
            and not segment.deleting
            and not any(ref in exists for ref in segment.refs)
        ]

    def _forget(self, indexes: list[int]) -> None:
        for index in indexes:
            del self._segments[index]
        self._enqueuing = [segment for segment in self._enqueuing if segment.index in self._segments]
        self._firsts = [segment.first_seq for segment in self._enqueuing]

    # -- files (blocking) -------------------------------------------------------------------------

    def recover(self) -> list[StoredMessage]:
        """`recover_index`, then every unsettled message whole, in seq order: for tests and tools (the
        broker itself keeps most of a large backlog on disk, see broker/recovery.py)."""
        index = self.recover_index(allowance=1 << 62)
        with collection_paused():
            return [
                StoredMessage(
                    *index.kept[i], delivered=bool(delivered), deadline=index.deadline(i), location=at
                )
                for i, (delivered, at) in enumerate(zip(index.delivered, index.locations, strict=True))
                if i in index.kept
            ]

    def recover_index(self, allowance: int = 0) -> RecoveredLog:
        """Read every segment: which messages are unsettled, where, and which were delivered; and the whole
        records of the first ones within `allowance` bytes (see RecoveredLog). Repairs as it reads (see
        segments.py), deletes the segments nothing needs any more, and starts a new segment for the appends
        to come."""
        if self._recovered:
            raise RuntimeError(f"{self.directory}: already recovered")
        columns = _Columns(allowance)
        indexes = segments.list_segments(self.directory)
        with collection_paused():
            for index in indexes:
                reader = segments.open_segment(segments.segment_path(self.directory, index))
                if reader is not None:
                    self._segments[index] = segment = _Segment(index)
                    self._read(reader, segment, columns)
        recovered = columns.unsettled()
        self._live = set(recovered.seqs)
        self._live.update(seq for seq, _, _ in recovered.held)
        self._active = _Segment(indexes[-1] + 1 if indexes else 0)
        self._recovered = True
        while deletable := self._deletable():
            # One round at a time, made durable before the next: a later round's segments hold settles
            # of messages in this round's.
            for segment in deletable:
                segments.segment_path(self.directory, segment.index).unlink()
            segments.fsync_directory(self.directory)
            self._forget([segment.index for segment in deletable])
        return recovered

    def _read(self, reader: segments.SegmentReader, segment: _Segment, columns: _Columns) -> None:
        data = reader.data
        peek_enqueue = records.peek_enqueue
        peek_priority = records.peek_priority
        names: dict[bytes, str] = {}
        top = self.last_seq
        enqueued = 0  # added to segment.live at the end: this loop is the hot path of a restart
        at = location(segment.index, 0) - records.HEADER_SIZE  # + a payload's start: its record's location
        for kind, start, end in reader:
            self.position += 1
            try:
                if kind in ENQUEUES:
                    # An expiring enqueue is a plain one after its deadline.
                    payload = start if kind == ENQUEUE else start + records.DEADLINE_SIZE
                    seq, size, flags, properties = peek_enqueue(data, payload, end)
                    priority = peek_priority(data, payload, end) if flags & _PRIORITY_FLAG else 0
                    # Decoded before it counts: a record that fails to decode is skipped whole.
                    record = (
                        records.decode_enqueue(data, payload, end, names)
                        if size + properties + KEPT_OVERHEAD <= columns.room
                        else None
                    )
                    if kind == ENQUEUE:
                        columns.add(seq, at + start, size, flags, properties, priority)
                    else:
                        deadline = records.decode_deadline(data, start)
                        columns.add_expiring(seq, at + start, size, flags, properties, priority, deadline)
                    if record is not None:
                        columns.keep(record)
                    if not enqueued:
                        segment.first_seq = seq
                        self._enqueuing.append(segment)
                        self._firsts.append(seq)
                    enqueued += 1
                    segment.last_seq = seq
                elif kind == SETTLE or kind == REMOVED:
                    seq = top
                    if kind == SETTLE:
                        settled = records.decode_settle(data, start, end)
                    else:
                        _, _, settled = records.decode_removed(data, start, end)
                    for seq in settled:
                        self._refer(segment, seq, columns.settle(seq))
                elif kind == DELIVERED:
                    seq = records.decode_delivered(data, start, end)
                    columns.deliver(seq)
                    self._refer(segment, seq, False)
                elif kind == RETURNED:
                    seq = top
                    _, returned = records.decode_returned(data, start, end)
                    for seq in returned:
                        columns.returned(seq)
                        self._refer(segment, seq, False)
                elif kind == DEAD_LETTERING:
                    seq = top
                    _, reason, held = records.decode_removed(data, start, end)
                    for seq in held:
                        columns.dead_lettering(seq, reason)
                        self._refer(segment, seq, False)
                else:  # EPOCH: the log's position here (the epoch matters once queues are replicated)
                    seq = top
                    self.position = records.decode_epoch(data, start, end)[1] + 1
            except (ValueError, UnicodeDecodeError, struct.error) as exc:
                # A valid CRC over a malformed payload is a bug, not damage: lose the record, not the queue.
                log.error("%s: skipping a malformed record at offset %d: %s", reader.path, start, exc)
                continue
            if seq > top:
                top = seq
        reader.repair()
        segment.live += enqueued
        self.last_seq = top

    def _refer(self, segment: _Segment, seq: int, settled: bool) -> None:
        """Bookkeeping for a settle (`settled`: it settled a live message) or delivered record of `seq`
        found in `segment`."""
        target = self._segment_of(seq)
        if target is None:
            return
        if settled:
            target.live -= 1
        if target is not segment:
            segment.refs.add(target.index)

    def delete(self) -> None:
        """Remove the queue's directory and everything in it."""
        shutil.rmtree(self.directory)
        segments.fsync_directory(self.directory.parent)
