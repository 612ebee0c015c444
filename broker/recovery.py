"""How a durable queue's recovered messages come back into it: the head in memory, the rest left in the
log as paged-out chunks (queues/paging.py), so that a backlog larger than the memory budget recovers in
bounded memory. The log's index of them (store.queue_log.RecoveredLog) holds no bodies.

Queues with a lifecycle (TTL, limits, dead-lettering...) recover the same way: a chunk keeps its messages'
deadlines in memory (8 bytes each), as paging out does. Two kinds get their whole backlog in memory:
priority queues (which never page) and queues whose log counted returns (a quorum queue's delivery
counts, which chunks do not carry). A deadline logged with a message is wall-clock time; the queue gets
the time it has left, so that a message whose TTL ran out while the broker was down expires as soon as the
node's timers run, and the others keep only the rest of their TTL.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from pathlib import Path

from leveret.broker.pager import entry_from_record
from leveret.broker.queues.paging import OVERHEAD, Chunk
from leveret.broker.queues.queue import Entry, Queue
from leveret.broker.store.queue_log import NO_DEADLINE, RecoveredLog, collection_paused
from leveret.broker.store.reader import read_enqueues


def restore_queue(
    queue: Queue, directory: Path, recovered: RecoveredLog, next_seq: int, after_crash: bool, wall_now: float
) -> int:
    """Put `recovered` (read from the log in `directory`) back into `queue`; returns how many came back.
    `wall_now`: the wall clock (seconds since the epoch) that logged deadlines are compared with."""
    count = len(recovered)
    redelivered = bytes([1]) * count if after_crash else bytes(recovered.delivered)
    pager = queue.pager
    in_memory = count
    lifecycle = queue.lifecycle
    # (A log from before deadlines were kept, with expiring messages, comes back whole as it did.)
    old_expiring = recovered.expiring and recovered.deadlines is None
    if (lifecycle is None or lifecycle.pages) and recovered.returns is None and not old_expiring:
        room = max(pager.limit - pager.used, 0)
        in_memory = used = 0
        sizes = recovered.sizes
        while in_memory < count and used < room:
            used += sizes[in_memory] + OVERHEAD
            in_memory += 1
    with collection_paused():
        head, expires_in, returns = _read(directory, recovered, redelivered, in_memory, wall_now)
    queue.restore(head, next_seq, expires_in, returns)
    if in_memory < count:
        deadlines = _deadlines(queue, recovered, in_memory, wall_now)
        queue.restore_paged(list(_chunks(recovered, redelivered, in_memory, pager.chunk_size, deadlines)))
    return len(head) + count - in_memory


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
    directory: Path, recovered: RecoveredLog, redelivered: bytes, stop: int, wall_now: float
) -> tuple[list[Entry], list[float | None] | None, list[int] | None]:
    """The first `stop` messages: those the scan kept, and the rest read back from the log (one that
    cannot be is logged, and lost); the seconds each has left before its logged deadline (None: logged
    without one), if any has one; and how often each came back to the queue, if any did."""
    kept = recovered.kept
    missing = [position for position in range(stop) if position not in kept]
    if missing:
        found = read_enqueues(directory, [recovered.locations[position] for position in missing])
        kept = {**kept, **{p: record for p, record in zip(missing, found, strict=True) if record is not None}}
    deadlines = recovered.deadlines
    expires_in: list[float | None] | None = None if deadlines is None else []
    returns: list[int] | None = None if recovered.returns is None else []
    entries = []
    wire: dict[tuple[str, str], bytes] = {}  # one names_raw per exchange and routing key
    for position in range(stop):
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
    recovered: RecoveredLog, redelivered: bytes, start: int, chunk_size: int, deadlines: array | None
) -> Iterator[Chunk]:
    """The messages from `start` on as chunks of about `chunk_size` of budget each; `deadlines`: theirs,
    from `start` on, if any may have one."""
    sizes = recovered.sizes
    count = len(recovered)
    first = start
    while start < count:
        end, body_bytes = start + 1, sizes[start]
        while end < count and body_bytes + OVERHEAD * (end - start) < chunk_size:
            body_bytes += sizes[end]
            end += 1
        chunk = Chunk.in_log(
            recovered.seqs[start:end], recovered.locations[start:end], body_bytes, redelivered[start:end]
        )
        if deadlines is not None:
            chunk.expires = deadlines[start - first:end - first]
        yield chunk
        start = end
