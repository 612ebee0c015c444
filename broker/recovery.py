"""How a durable queue's recovered messages come back into it: the head in memory, the rest left in the
log as paged-out chunks (queues/paging.py), so that a backlog larger than the memory budget recovers in
bounded memory. The log's index of them (store.queue_log.RecoveredLog) holds no bodies.

Queues whose messages carry deadlines (a lifecycle queue, or any message with an `expiration`) get all of
them in memory, as their deadlines are kept there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from leveret.broker.pager import entry_from_record
from leveret.broker.queues.lifecycle import LifecycleQueue
from leveret.broker.queues.paging import OVERHEAD, Chunk
from leveret.broker.queues.queue import Entry, Queue
from leveret.broker.store.queue_log import RecoveredLog, collection_paused
from leveret.broker.store.reader import read_enqueues


def restore_queue(
    queue: Queue, directory: Path, recovered: RecoveredLog, next_seq: int, after_crash: bool
) -> int:
    """Put `recovered` (read from the log in `directory`) back into `queue`; returns how many came back."""
    count = len(recovered)
    redelivered = bytes([1]) * count if after_crash else bytes(recovered.delivered)
    pager = queue.pager
    in_memory = count
    if not recovered.expiring and not isinstance(queue, LifecycleQueue):
        room = max(pager.limit - pager.used, 0)
        in_memory = used = 0
        sizes = recovered.sizes
        while in_memory < count and used < room:
            used += sizes[in_memory] + OVERHEAD
            in_memory += 1
    with collection_paused():
        head = _read(directory, recovered, redelivered, in_memory)
    queue.restore(head, next_seq)
    queue.restore_paged(list(_chunks(recovered, redelivered, in_memory, pager.chunk_size)))
    return len(head) + count - in_memory


def _read(directory: Path, recovered: RecoveredLog, redelivered: bytes, stop: int) -> list[Entry]:
    """The first `stop` messages: those the scan kept, and the rest read back from the log (one that
    cannot be is logged, and lost)."""
    kept = recovered.kept
    missing = [position for position in range(stop) if position not in kept]
    if missing:
        found = read_enqueues(directory, [recovered.locations[position] for position in missing])
        kept = {**kept, **{p: record for p, record in zip(missing, found, strict=True) if record is not None}}
    entries = []
    wire: dict[tuple[str, str], bytes] = {}  # one names_raw per exchange and routing key
    for position in range(stop):
        record = kept.get(position)
        if record is not None:
            entries.append(
                entry_from_record(record, recovered.locations[position], bool(redelivered[position]), wire)
            )
    return entries


def _chunks(recovered: RecoveredLog, redelivered: bytes, start: int, chunk_size: int) -> Iterator[Chunk]:
    """The messages from `start` on as chunks of about `chunk_size` of budget each."""
    sizes = recovered.sizes
    count = len(recovered)
    while start < count:
        end, body_bytes = start + 1, sizes[start]
        while end < count and body_bytes + OVERHEAD * (end - start) < chunk_size:
            body_bytes += sizes[end]
            end += 1
        yield Chunk.in_log(
            recovered.seqs[start:end], recovered.locations[start:end], body_bytes, redelivered[start:end]
        )
        start = end
