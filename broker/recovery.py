"""How a durable queue's recovered messages come back into it: the head in memory, the rest left in the
log as paged-out chunks (queues/paging.py), so that a backlog larger than the memory budget recovers in
bounded memory. The log's index of them (store.queue_log.RecoveredLog) holds no bodies; what the memory
budget counts of each (body, raw properties and the per-message overhead) decides what is kept.

Queues with a lifecycle (TTL, limits, dead-lettering...) recover the same way: a chunk keeps its messages'
deadlines and delivery counts (a quorum queue's) in memory, 8 bytes each, as paging out does. A priority
queue keeps the head of its delivery order in memory (the highest levels first) and the rest of each level
in the log as that level's chunks. Only an expiring log from before deadlines were kept comes back whole.
A deadline logged with a message is wall-clock time; the queue gets the time it has left, so that a message
whose TTL ran out while the broker was down expires as soon as the node's timers run, and the others keep
only the rest of their TTL.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator, Sequence

from leveret.broker.pager import entry_from_record
from leveret.broker.queues.paging import OVERHEAD, Chunk
from leveret.broker.queues.queue import Entry, Queue
from leveret.broker.store.queue_log import NO_DEADLINE, RecoveredLog, collection_paused
from leveret.broker.store.reader import Enqueued

# Reads the enqueue records at the locations given (in a queue's log: StoreJournal.read_enqueues).
Reader = Callable[[Sequence[int]], list[Enqueued | None]]


def restore_queue(
    queue: Queue, read: Reader, recovered: RecoveredLog, next_seq: int, after_crash: bool, wall_now: float,
    read_now: int | None = None,
) -> int:
    """Put `recovered` (its records read with `read`, the queue's journal's `read_enqueues`) back into
    `queue`; returns how many came back. `wall_now`: the wall clock (seconds since the epoch) that logged
    deadlines are compared with. `read_now`: at most about so many bytes are read back at once (default:
    what the memory budget has room for); the rest stays paged out, for the pager to read back in its
    worker thread. A replicated queue's new leader comes back the same way, from its replica
    (broker/cluster/roles.py)."""
    count = len(recovered)
    redelivered = bytes([1]) * count if after_crash else bytes(recovered.delivered)
    lifecycle = queue.lifecycle
    levels = _levels(queue, recovered)
    # The delivery order: by seq, or, in a priority queue, by level (highest first), then seq.
    order: Sequence[int] = range(count) if levels is None else [p for level in levels for p in level]
    # (A log from before deadlines were kept, with expiring messages, comes back whole as it did.)
    if recovered.expiring and recovered.deadlines is None:
        in_memory = count
    else:
        room = max(queue.pager.limit - queue.pager.used, 0)
        in_memory = _room_for(recovered, order, room if read_now is None else min(room, read_now))
    head = order[:in_memory] if levels is None else sorted(order[:in_memory])
    with collection_paused():
        entries, expires_in, returns = _read(read, recovered, redelivered, head, wall_now)
    queue.restore(entries, next_seq, expires_in, returns)
    if in_memory < count:
        chunk_size = queue.pager.chunk_size
        if levels is None:
            deadlines = _deadlines(queue, recovered, in_memory, wall_now)
            queue.restore_paged(list(_chunks(recovered, redelivered, in_memory, chunk_size, deadlines)))
        else:
            assert lifecycle is not None  # a priority queue's
            kept = set(head)
            by_level = {}
            for index, positions in enumerate(levels):
                rest = [p for p in positions if p not in kept]
                if rest:
                    part = _subset(recovered, rest)
                    flags = bytes(redelivered[p] for p in rest)
                    by_level[len(levels) - 1 - index] = list(
                        _chunks(part, flags, 0, chunk_size, _deadlines(queue, part, 0, wall_now), exact=True)
                    )
            lifecycle.restore_levels(by_level)
    if recovered.held:
        _restore_held(queue, read, recovered)
    return len(entries) + count - in_memory


def _restore_held(queue: Queue, read: Reader, recovered: RecoveredLog) -> None:
    """Messages dead-lettered at least once and not yet everywhere: back in the queue's outbox."""
    held = recovered.held
    found = read([at for _, at, _ in held])
    wire: dict[tuple[str, str], bytes] = {}
    entries, reasons = [], []
    for (_, at, reason), record in zip(held, found, strict=True):
        if record is not None:
            entries.append(entry_from_record(record, at, True, wire))
            reasons.append(reason)
    if queue.lifecycle is not None:
        queue.lifecycle.restore_held(entries, reasons)
    else:  # a queue without a lifecycle has no dead-lettering: they went
        for entry, reason in zip(entries, reasons, strict=True):
            queue.journal.removed([entry], reason)


def _levels(queue: Queue, recovered: RecoveredLog) -> list[list[int]] | None:
    """For a priority queue, its messages' positions by level, the highest level first, each in seq
    order (a priority above the queue's maximum counts as the maximum)."""
    lifecycle = queue.lifecycle
    top = lifecycle.settings.max_priority if lifecycle is not None else None
    if top is None:
        return None
    levels: list[list[int]] = [[] for _ in range(top + 1)]
    priorities = recovered.priorities
    if priorities is None:
        levels[top] = list(range(len(recovered)))  # all at priority 0
        return levels
    for position, priority in enumerate(priorities):
        levels[top - min(priority, top)].append(position)
    return levels


def _room_for(recovered: RecoveredLog, order: Sequence[int], room: int) -> int:
    """How many messages, in `order`, the free budget `room` takes (the one that crosses it included)."""
    sizes, properties = recovered.sizes, recovered.properties
    taken = used = 0
    count = len(order)
    while taken < count and used < room:
        position = order[taken]
        used += sizes[position] + properties[position] + OVERHEAD
        taken += 1
    return taken


def _subset(recovered: RecoveredLog, positions: list[int]) -> RecoveredLog:
    """The columns of the messages at `positions` (nothing kept)."""

    def pick(column: array) -> array:
        return array(column.typecode, (column[p] for p in positions))

    return RecoveredLog(
        pick(recovered.seqs),
        pick(recovered.locations),
        pick(recovered.sizes),
        pick(recovered.properties),
        bytearray(recovered.delivered[p] for p in positions),
        recovered.expiring,
        {},
        None if recovered.deadlines is None else pick(recovered.deadlines),
        None if recovered.returns is None else pick(recovered.returns),
        None,
    )


def _deadlines(queue: Queue, recovered: RecoveredLog, start: int, wall_now: float) -> array | None:
    """The queue-clock deadline of each message from `start` on (math.nan: none), if it may have one: what
    it has left of its logged deadline, never more than the queue's TTL from now (the wall clock may have
    gone back); the queue's TTL from now for one logged without a deadline (its own `expiration`, in its
    body's record, is read back with it but not counted until then)."""
    lifecycle = queue.lifecycle
    if lifecycle is None:
        return None  # a plain queue, nothing expiring: `restore` would have made it a lifecycle
    ttl = lifecycle.settings.message_ttl
    logged = recovered.deadlines
    if logged is None and ttl is None:
        return None
    now = queue.clock()
    longest = math.inf if ttl is None else now + ttl / 1000
    expires = array("d")
    for position in range(start, len(recovered)):
        deadline = NO_DEADLINE if logged is None else logged[position]
        if deadline == NO_DEADLINE:
            expires.append(math.nan if ttl is None else longest)
        else:
            expires.append(min(now + deadline / 1000 - wall_now, longest))
    return expires


def _read(
    read: Reader, recovered: RecoveredLog, redelivered: bytes, positions: Sequence[int], wall_now: float
) -> tuple[list[Entry], list[float | None] | None, list[int] | None]:
    """The messages at `positions` (in seq order): those the scan kept, and the rest read back from the
    log (one that cannot be is logged, and lost); the seconds each has left before its logged deadline
    (None: logged without one), if any has one; and how often each came back to the queue, if any did."""
    kept = recovered.kept
    missing = [position for position in positions if position not in kept]
    if missing:
        found = read([recovered.locations[position] for position in missing])
        kept = {**kept, **{p: record for p, record in zip(missing, found, strict=True) if record is not None}}
    deadlines = recovered.deadlines
    expires_in: list[float | None] | None = None if deadlines is None else []
    returns: list[int] | None = None if recovered.returns is None else []
    entries = []
    wire: dict[tuple[str, str], bytes] = {}  # one names_raw per exchange and routing key
    for position in positions:
        record = kept.get(position)
        if record is None:
            continue
        entries.append(
            entry_from_record(record, recovered.locations[position], bool(redelivered[position]), wire)
        )
        if expires_in is not None:
            assert deadlines is not None
            deadline = deadlines[position]
            expires_in.append(None if deadline == NO_DEADLINE else deadline / 1000 - wall_now)
        if returns is not None:
            assert recovered.returns is not None
            returns.append(recovered.returns[position])
    return entries, expires_in, returns


def _chunks(
    recovered: RecoveredLog,
    redelivered: bytes,
    start: int,
    chunk_size: int,
    deadlines: array | None,
    *,
    exact: bool = False,
) -> Iterator[Chunk]:
    """The messages from `start` on as chunks of about `chunk_size` of budget each (bodies, raw properties
    and OVERHEAD, as a chunk read back takes memory); `deadlines`: theirs, from `start` on, if any may have
    one. `exact`: the chunks keep their seqs (they do not hold every seq in their range)."""
    sizes, properties = recovered.sizes, recovered.properties
    returns = recovered.returns
    count = len(recovered)
    first = start
    while start < count:
        end, body_bytes = start + 1, sizes[start]
        held = body_bytes + properties[start] + OVERHEAD
        while end < count and held < chunk_size:
            body_bytes += sizes[end]
            held += sizes[end] + properties[end] + OVERHEAD
            end += 1
        chunk = Chunk.in_log(
            recovered.seqs[start:end], recovered.locations[start:end], body_bytes, redelivered[start:end]
        )
        if deadlines is not None:
            chunk.expires = deadlines[start - first:end - first]
        if returns is not None and any(returns[start:end]):
            chunk.returns = returns[start:end]
        if exact:
            chunk.seqs = recovered.seqs[start:end]
        yield chunk
        start = end
