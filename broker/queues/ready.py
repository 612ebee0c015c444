"""Ready-message storage for queues with a lifecycle: FIFO, or by priority; both count body bytes and
know their heads' expiry. (A plain queue keeps a bare deque: see Queue.)"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leveret.broker.queues.lifecycle import TrackedEntry
    from leveret.broker.queues.queue import Entry


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


def _pop_expired(ready: deque[TrackedEntry], now: float, limit: int, into: list[TrackedEntry]) -> None:
    # Only the head expires (as in RabbitMQ): entries behind one without a deadline, or with a later
    # one, wait until they reach the head.
    while ready and len(into) < limit:
        expires = ready[0].expires
        if expires is None or expires > now:
            return
        into.append(ready.popleft())


class FifoReady:
    __slots__ = ("_entries", "bytes")

    def __init__(self) -> None:
        self._entries: deque[TrackedEntry] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[TrackedEntry]:
        return iter(self._entries)

    def append(self, entry: TrackedEntry) -> None:
        self._entries.append(entry)
        self.bytes += len(entry.message.body)

    def popleft(self) -> TrackedEntry:
        entry = self._entries.popleft()
        self.bytes -= len(entry.message.body)
        return entry

    def peek(self) -> TrackedEntry:
        return self._entries[0]

    def requeue(self, returned: list[TrackedEntry]) -> None:
        requeue_into(self._entries, returned)
        self.bytes += sum(len(entry.message.body) for entry in returned)

    def pop_expired(self, now: float, limit: int) -> list[TrackedEntry]:
        expired: list[TrackedEntry] = []
        _pop_expired(self._entries, now, limit, expired)
        self.bytes -= sum(len(entry.message.body) for entry in expired)
        return expired

    def next_expiry(self) -> float | None:
        return self._entries[0].expires if self._entries else None

    def clear(self) -> list[TrackedEntry]:
        entries = list(self._entries)
        self._entries.clear()
        self.bytes = 0
        return entries


class PriorityReady:
    """Higher priority first, FIFO within one; a message above the queue's maximum counts as the maximum."""

    __slots__ = ("_levels", "_top", "_count", "bytes")

    def __init__(self, max_priority: int) -> None:
        self._levels: list[deque[TrackedEntry]] = [deque() for _ in range(max_priority + 1)]
        self._top = -1  # highest level that may be non-empty
        self._count = 0
        self.bytes = 0

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
        self.bytes += len(entry.message.body)

    def _head_level(self) -> deque[TrackedEntry]:
        levels = self._levels
        while not levels[self._top]:
            self._top -= 1
        return levels[self._top]

    def popleft(self) -> TrackedEntry:
        entry = self._head_level().popleft()
        self._count -= 1
        self.bytes -= len(entry.message.body)
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
        self.bytes += sum(len(entry.message.body) for entry in returned)

    def pop_expired(self, now: float, limit: int) -> list[TrackedEntry]:
        expired: list[TrackedEntry] = []
        for level in self._levels[: self._top + 1]:
            _pop_expired(level, now, limit, expired)
        self._count -= len(expired)
        self.bytes -= sum(len(entry.message.body) for entry in expired)
        return expired

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
        return entries
