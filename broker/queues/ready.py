"""Ready-message storage for queues with a lifecycle: FIFO, or by priority; both count body bytes (and
their footprint in the node's memory budget, see paging.py) and know their heads' expiry. (A plain queue
keeps a bare deque: see Queue.)"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, cast

from leveret.broker.queues.paging import OVERHEAD, READ_AHEAD, PagedTail, footprint

if TYPE_CHECKING:
    from leveret.broker.queues.entry import Entry, TrackedEntry
    from leveret.broker.queues.paging import Chunk, Footprint


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


class ChunkSource(Protocol):
    """What a priority queue's ready list needs for its levels' chunks (the queue's lifecycle has it)."""

    def read_ahead(self, chunk: Chunk) -> None:
        """Start reading `chunk` back (the queue hears of it through `chunk_loaded`)."""

    def read_now(self, chunk: Chunk) -> None:
        """Read `chunk` back here and now (blocking), into `chunk.entries`."""

    def entries_of(self, chunk: Chunk) -> list[TrackedEntry]:
        """The read-back chunk's entries, as the queue keeps them; the chunk is done with."""
        ...


class PriorityReady:
    """Higher priority first, FIFO within one; a message above the queue's maximum counts as the maximum.

    A recovered backlog larger than the memory budget keeps, per level, its back in the log as chunks
    (paging.py's model, one level at a time: the level's head in memory, its chunks, then a tail of what
    was published since), read back as the level comes up. Length and `bytes` count every message, in
    memory or not; the budget only those in memory. Priority queues do not page out at run time."""

    __slots__ = ("_levels", "_paged", "_top", "_count", "bytes", "_memory", "source")

    def __init__(self, max_priority: int, memory: Footprint) -> None:
        self._levels: list[deque[TrackedEntry]] = [deque() for _ in range(max_priority + 1)]
        self._paged: dict[int, PagedTail] = {}  # levels with chunks: what follows their head
        self._top = -1  # highest level that may be non-empty
        self._count = 0
        self.bytes = 0
        self._memory = memory
        self.source: ChunkSource | None = None  # set along with the first chunks

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[TrackedEntry]:
        """The entries in memory, in delivery order by level (those in chunks are not)."""
        for level in range(len(self._levels) - 1, -1, -1):
            yield from self._levels[level]
            paged = self._paged.get(level)
            if paged is not None:
                yield from cast("deque[TrackedEntry]", paged.tail)

    def _level(self, entry: TrackedEntry) -> int:
        return min(entry.message.priority, len(self._levels) - 1)

    def append(self, entry: TrackedEntry) -> None:
        level = self._level(entry)
        paged = self._paged.get(level) if self._paged else None
        if paged is None:
            self._levels[level].append(entry)
        else:
            paged.append(entry)
        self._top = max(self._top, level)
        self._count += 1
        message = entry.message
        self.bytes += len(message.body)
        self._memory.used += message.size + OVERHEAD

    def _head_level(self) -> deque[TrackedEntry]:
        """The highest level with messages, its head in memory (read back here if it must be)."""
        levels = self._levels
        while True:
            head = levels[self._top]
            if head:
                return head
            paged = self._paged.get(self._top) if self._paged else None
            if paged is None:
                self._top -= 1
                continue
            self._fill(self._top, paged, block=True)
            if head:
                return head

    def popleft(self) -> TrackedEntry:
        head = self._head_level()
        entry = head.popleft()
        self._count -= 1
        message = entry.message
        self.bytes -= len(message.body)
        self._memory.used -= message.size + OVERHEAD
        if self._paged:
            paged = self._paged.get(self._top)
            if paged is not None:
                self._fill(self._top, paged, block=False)
        return entry

    def peek(self) -> TrackedEntry:
        return self._head_level()[0]

    # ---- chunks (a recovered backlog) --------------------------------------------------------

    def restore_paged(self, chunks: dict[int, list[Chunk]], source: ChunkSource) -> None:
        """Recovered messages behind each level's restored head, still in the log. Call after the
        heads are restored, before any publish."""
        self.source = source
        for level, level_chunks in chunks.items():
            if not level_chunks:
                continue
            paged = self._paged[level] = PagedTail()
            paged.chunks.extend(level_chunks)
            paged.count = sum(chunk.count for chunk in level_chunks)
            paged.body_bytes = sum(chunk.body_bytes for chunk in level_chunks)
            self._count += paged.count
            self.bytes += paged.body_bytes
            self._top = max(self._top, level)

    def chunk_loaded(self, chunk: Chunk) -> None:
        """A chunk read ahead is back: installed once its level's head runs short."""
        for level, paged in self._paged.items():
            if chunk in paged.chunks:
                self._fill(level, paged, block=False)
                return

    def _fill(self, level: int, paged: PagedTail, *, block: bool) -> None:
        """Install the level's first chunks while its head holds fewer messages than the next one
        (reading it here when the head is empty and `block`); read the next ones ahead while the level
        is the highest. The tail joins the head once the last chunk is in."""
        source = self.source
        assert source is not None
        head = self._levels[level]
        chunks = paged.chunks
        while chunks and len(head) < chunks[0].count:
            chunk = chunks[0]
            if chunk.entries is None:
                if head or not block:
                    break
                source.read_now(chunk)
            chunks.popleft()
            entries = source.entries_of(chunk)
            paged.count -= chunk.live
            paged.body_bytes -= chunk.body_bytes
            self._count -= chunk.live - len(entries)  # any lost in reading
            self.bytes += sum(len(entry.message.body) for entry in entries) - chunk.body_bytes
            head.extend(entries)
            self._memory.used += footprint(entries)
        if not chunks:
            del self._paged[level]
            head.extend(cast("deque[TrackedEntry]", paged.tail))  # counted already
            return
        if level == self._top and len(head) < READ_AHEAD * chunks[0].count:
            for chunk in itertools.islice(chunks, READ_AHEAD):
                if chunk.entries is None and not chunk.loading:
                    chunk.loading = True
                    source.read_ahead(chunk)

    def take_chunks(self) -> list[Chunk]:
        """Forget every level's chunks (purge, delete); their tails stay, joining the heads."""
        chunks: list[Chunk] = []
        for level, paged in self._paged.items():
            chunks += paged.chunks
            self._count -= paged.count - len(paged.tail)
            self.bytes -= paged.body_bytes - sum(len(entry.message.body) for entry in paged.tail)
            self._levels[level].extend(cast("deque[TrackedEntry]", paged.tail))
        self._paged = {}
        return chunks

    # ---- the rest -----------------------------------------------------------------------------

    def requeue(self, returned: list[TrackedEntry]) -> None:
        by_level: dict[int, list[TrackedEntry]] = {}
        for entry in returned:
            by_level.setdefault(self._level(entry), []).append(entry)
        for level, entries in by_level.items():
            # Returned ones came from the level's head: they sort before any chunk of it.
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
        if self._paged:
            for index, paged in list(self._paged.items()):
                if not self._levels[index]:  # its next deadline is in its first chunk
                    self._read_first(paged)
        return expired

    def _read_first(self, paged: PagedTail) -> None:
        chunk = paged.chunks[0]
        if chunk.entries is None and not chunk.loading and self.source is not None:
            chunk.loading = True
            self.source.read_ahead(chunk)

    def remove(self, seqs: set[int]) -> list[TrackedEntry]:
        """Take the entries with these seqs out, wherever they are in memory."""
        gone = [entry for level in self._levels for entry in remove_seqs(level, seqs)]
        for paged in self._paged.values():
            tail_gone = remove_seqs(paged.tail, seqs)
            paged.count -= len(tail_gone)
            paged.body_bytes -= sum(len(entry.message.body) for entry in tail_gone)
            gone += tail_gone
        self._count -= len(gone)
        size, footprint = _budget(gone)
        self.bytes -= size
        self._memory.used -= footprint
        return gone

    def next_expiry(self) -> float | None:
        levels = self._levels[: self._top + 1]
        heads = [level[0].expires for level in levels if level and level[0].expires is not None]
        for level, paged in self._paged.items():
            if not self._levels[level] and paged.chunks:
                first = paged.chunks[0].first_expires
                if first is not None:
                    heads.append(first)
        return min(heads) if heads else None

    def clear(self) -> list[TrackedEntry]:
        """Every entry in memory (take_chunks first, for those in chunks)."""
        entries = list(self)
        for level in self._levels:
            level.clear()
        for paged in self._paged.values():
            paged.tail.clear()
        self._top = -1
        self._count = 0
        self.bytes = 0
        self._memory.used -= _budget(entries)[1]
        return entries
