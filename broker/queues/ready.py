"""Ready-message storage for queues with a lifecycle: FIFO, or by priority; both count body bytes (and
their footprint in the node's memory budget, see paging.py) and know their heads' expiry. (A plain queue
keeps a bare deque: see Queue.)"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from leveret.broker.queues.paging import OVERHEAD, footprint

if TYPE_CHECKING:
    from leveret.broker.queues.entry import Entry, TrackedEntry
    from leveret.broker.queues.paging import Footprint


def seq_of(entry: Entry) -> int:
    return entry.seq


def requeue_into(ready: deque, returned: list) -> None:
    """Put returned entries (sorted by seq) back among the ready ones, in publish order."""
    if ready and returned and ready[0].seq < returned[-1].seq:
        merged = list(heapq.merge(returned, ready, key=seq_of))
        ready.clear()
        ready.extend(merged)
    else:
        ready.extendleft(reversed(returned))


def take_back(entries: deque, want: int, keep: int, above: int) -> tuple[list, list[int]]:
    """Pop entries off the back of `entries` for paging out: about `want` bytes of budget, leaving the first
    `keep`, and none with a seq up to `above` (see paging.py). Returns them in order, with their body
    sizes."""
    taken: list = []
    sizes: list[int] = []
    size = 0
    for _ in range(len(entries) - keep):
        if size >= want or entries[-1].seq <= above:
            break
        entry = entries.pop()
        body = len(entry.message.body)
        taken.append(entry)
        sizes.append(body)
        size += entry.message.size + OVERHEAD
    taken.reverse()
    sizes.reverse()
    return taken, sizes


def take_front(entries: deque, want: int) -> tuple[list, list[int]]:
    """Pop about `want` bytes of budget off the front of `entries` (a paged queue's tail, which pages out
    right behind its chunks), with their body sizes."""
    taken: list = []
    sizes: list[int] = []
    size = 0
    while entries and size < want:
        entry = entries.popleft()
        body = len(entry.message.body)
        taken.append(entry)
        sizes.append(body)
        size += entry.message.size + OVERHEAD
    return taken, sizes


def _pop_expired(ready: deque[TrackedEntry], now: float, limit: int, into: list[TrackedEntry]) -> None:
    # Only the head expires (as in RabbitMQ): entries behind one without a deadline, or with a later
    # one, wait until they reach the head.
    while ready and len(into) < limit:
        expires = ready[0].expires
        if expires is None or expires > now:
            return
        into.append(ready.popleft())


def remove_seqs(entries: deque, seqs: set[int]) -> list:
    """Take the entries with these seqs out of `entries` (in place), in order."""
    gone = [entry for entry in entries if entry.seq in seqs]
    if gone:
        kept = [entry for entry in entries if entry.seq not in seqs]
        entries.clear()
        entries.extend(kept)
    return gone


def _budget(entries: list[TrackedEntry]) -> tuple[int, int]:
    """(body bytes, budget footprint) of `entries`."""
    return sum(len(entry.message.body) for entry in entries), footprint(entries)


class FifoReady:
    __slots__ = ("_entries", "bytes", "_memory")

    def __init__(self, memory: Footprint) -> None:
        self._entries: deque[TrackedEntry] = deque()
        self.bytes = 0
        self._memory = memory

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[TrackedEntry]:
        return iter(self._entries)

    def append(self, entry: TrackedEntry) -> None:
        self._entries.append(entry)
        message = entry.message
        self.bytes += len(message.body)
        self._memory.used += message.size + OVERHEAD

    def popleft(self) -> TrackedEntry:
        entry = self._entries.popleft()
        message = entry.message
        self.bytes -= len(message.body)
        self._memory.used -= message.size + OVERHEAD
        return entry

    def peek(self) -> TrackedEntry:
        return self._entries[0]

    def requeue(self, returned: list[TrackedEntry]) -> None:
        requeue_into(self._entries, returned)
        self._added(returned)

    def pop_expired(self, now: float, limit: int) -> list[TrackedEntry]:
        expired: list[TrackedEntry] = []
        _pop_expired(self._entries, now, limit, expired)
        self._removed(expired)
        return expired

    def take_back(self, want: int, keep: int, above: int) -> tuple[list[TrackedEntry], list[int]]:
        """Entries off the back for paging out, with their body sizes (see `take_back`)."""
        taken, sizes = take_back(self._entries, want, keep, above)
        self.bytes -= sum(sizes)
        self._memory.used -= footprint(taken)
        return taken, sizes

    def next_expiry(self) -> float | None:
        return self._entries[0].expires if self._entries else None

    def remove(self, seqs: set[int]) -> list[TrackedEntry]:
        """Take the entries with these seqs out, wherever they are."""
        gone = remove_seqs(self._entries, seqs)
        self._removed(gone)
        return gone

    def clear(self) -> list[TrackedEntry]:
        entries = list(self._entries)
        self._entries.clear()
        self._removed(entries)
        return entries

    def _added(self, entries: list[TrackedEntry]) -> None:
        size, footprint = _budget(entries)
        self.bytes += size
        self._memory.used += footprint

    def _removed(self, entries: list[TrackedEntry]) -> None:
        size, footprint = _budget(entries)
        self.bytes -= size
        self._memory.used -= footprint


class PriorityReady:
    """Higher priority first, FIFO within one; a message above the queue's maximum counts as the maximum."""

    __slots__ = ("_levels", "_top", "_count", "bytes", "_memory")

    def __init__(self, max_priority: int, memory: Footprint) -> None:
        self._levels: list[deque[TrackedEntry]] = [deque() for _ in range(max_priority + 1)]
        self._top = -1  # highest level that may be non-empty
        self._count = 0
        self.bytes = 0
        self._memory = memory

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[TrackedEntry]:
        for level in reversed(self._levels):
            yield from level

    def _level(self, entry: TrackedEntry) -> int:
        return min(entry.message.priority, len(self._levels) - 1)

    def append(self, entry: TrackedEntry) -> None:
        level = self._level(entry)
        self._levels[level].append(entry)
        self._top = max(self._top, level)
        self._count += 1
        message = entry.message
        self.bytes += len(message.body)
        self._memory.used += message.size + OVERHEAD

    def _head_level(self) -> deque[TrackedEntry]:
        levels = self._levels
        while not levels[self._top]:
            self._top -= 1
        return levels[self._top]

    def popleft(self) -> TrackedEntry:
        entry = self._head_level().popleft()
        self._count -= 1
        message = entry.message
        self.bytes -= len(message.body)
        self._memory.used -= message.size + OVERHEAD
        return entry

    def peek(self) -> TrackedEntry:
        return self._head_level()[0]

    def requeue(self, returned: list[TrackedEntry]) -> None:
        by_level: dict[int, list[TrackedEntry]] = {}
        for entry in returned:
            by_level.setdefault(self._level(entry), []).append(entry)
        for level, entries in by_level.items():
            requeue_into(self._levels[level], entries)
            self._top = max(self._top, level)
        self._count += len(returned)
        size, footprint = _budget(returned)
        self.bytes += size
        self._memory.used += footprint

    def pop_expired(self, now: float, limit: int) -> list[TrackedEntry]:
        expired: list[TrackedEntry] = []
        for level in self._levels[: self._top + 1]:
            _pop_expired(level, now, limit, expired)
        self._count -= len(expired)
        size, footprint = _budget(expired)
        self.bytes -= size
        self._memory.used -= footprint
        return expired

    def remove(self, seqs: set[int]) -> list[TrackedEntry]:
        """Take the entries with these seqs out, wherever they are."""
        gone = [entry for level in self._levels for entry in remove_seqs(level, seqs)]
        self._count -= len(gone)
        size, footprint = _budget(gone)
        self.bytes -= size
        self._memory.used -= footprint
        return gone

    def next_expiry(self) -> float | None:
        levels = self._levels[: self._top + 1]
        heads = [level[0].expires for level in levels if level and level[0].expires is not None]
        return min(heads) if heads else None

    def clear(self) -> list[TrackedEntry]:
        entries = list(self)
        for level in self._levels:
            level.clear()
        self._top = -1
        self._count = 0
        self.bytes = 0
        self._memory.used -= _budget(entries)[1]
        return entries
