"""Queues larger than memory, as a queue sees it: the node's memory budget for ready messages, and the
chunks a queue's ready list is paged out in.

A paged queue's ready list is three parts, in order:

    queue.ready (the head, in memory)  ++  paged.chunks (on disk)  ++  paged.tail (in memory)

Publishes go to the tail while there are chunks; deliveries take from the head; read-ahead loads the first
chunks back into the head before it runs dry; the queue is plain again once the last chunk is back. When
the ready messages of all queues take more memory than the budget, the node's pager (broker/pager.py)
pages out the back of the largest backlogs: the tail, or (a queue not paged yet) the back of the head.

Only entries above every seq the queue ever took back (requeue) are paged out. Every seq in a chunk is
then above every seq that can come back later: a delivery takes the head, which comes before every chunk,
and a return goes to the head in seq order, so returns keep their exact place without a chunk ever being
opened. It also means a chunk holds every message of its queue with a seq between its first and last.
"""

from __future__ import annotations

import math
from collections import deque
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from array import array
    from collections.abc import Iterable

    from leveret.broker.queues.entry import Entry
    from leveret.broker.queues.journal import Journal
    from leveret.broker.store.pages import PageRun

# What a ready message costs in memory beyond its body and raw properties: Entry, Message, the seq and the
# list slot (measured ~210 bytes). The budget counts it, so that many small messages page out too.
OVERHEAD = 256


def footprint(entries: Iterable[Entry]) -> int:
    """What `entries` take of the memory budget: each message's size (body and raw properties, see
    Message.size) plus OVERHEAD. x-max-length-bytes counts bodies alone, as RabbitMQ does."""
    return sum(entry.message.size + OVERHEAD for entry in entries)


# A chunk is at most this much budget (see `footprint`), the unit of paging I/O; less under a
# small budget (see Pager.chunk_size).
CHUNK_SIZE = 1024 * 1024
MIN_CHUNK_SIZE = 16 * 1024
# A threshold no budget reaches.
NEVER = 1 << 62
# Chunks loaded (or loading) ahead of the head, once the head holds less than this many chunks' worth.
READ_AHEAD = 2


_redelivered = attrgetter("redelivered")


class Chunk:
    """Consecutive ready messages of one queue, out of memory (or on their way out or back in).

    `entries` holds them while the chunk is resident: its write is not done yet, or it was read back. The
    rest is what reading it back needs (filled in by the pager): `run`, the page file records of the
    entries no durable log holds; `locations`, each entry's enqueue record in the queue's log (0: the next
    record of `run`), None when no entry is logged; `position`, the store position those log records are
    durable at. `redelivered`, `expires` and `returns` (how often each came back: a quorum queue's delivery
    count) are per entry, None when no entry has one. `dropped`: seqs discarded while the chunk was out
    (a nacked publish, see Queue.discard), left out when it is read back; the chunk still spans them.
    `seqs`: each entry's seq, kept only where the chunk does not hold every seq in its range (a priority
    level's, whose range other levels' messages interleave).
    """

    __slots__ = (
        "count", "size", "body_bytes", "first_seq", "last_seq", "entries", "loading", "gone",
        "redelivered", "expires", "returns", "dropped", "seqs", "run", "locations", "position",
    )  # fmt: skip

    def __init__(self, entries: list[Entry], body_bytes: int, expires: array | None) -> None:
        self.count = len(entries)
        self.body_bytes = body_bytes
        self.size = body_bytes + OVERHEAD * self.count
        self.first_seq = entries[0].seq
        self.last_seq = entries[-1].seq
        self.entries: list[Entry] | None = entries
        self.loading = False
        self.gone = False  # installed, purged or deleted: a read or write finishing later is ignored
        flags = bytes(map(_redelivered, entries))
        self.redelivered = flags if any(flags) else None
        self.expires = expires  # math.nan: no deadline
        self.returns: array | None = None
        self.dropped: set[int] | None = None
        self.seqs: array | None = None
        self.run: PageRun | None = None
        self.locations: array | None = None
        self.position = 0

    @classmethod
    def in_log(cls, seqs: array, locations: array, body_bytes: int, redelivered: bytes) -> Chunk:
        """Recovered messages left in their queue's log (all logged, none resident): what recovery does
        with a durable backlog past the memory budget."""
        chunk = cls.__new__(cls)
        chunk.count = len(seqs)
        chunk.body_bytes = body_bytes
        chunk.size = body_bytes + OVERHEAD * chunk.count
        chunk.first_seq, chunk.last_seq = seqs[0], seqs[-1]
        chunk.entries = None
        chunk.loading = chunk.gone = False
        chunk.redelivered = redelivered if any(redelivered) else None
        chunk.expires = chunk.returns = chunk.dropped = chunk.seqs = None
        chunk.run = None
        chunk.locations = locations
        chunk.position = 0  # durable already
        return chunk

    @property
    def live(self) -> int:
        """How many of its messages are still the queue's (not dropped)."""
        return self.count - len(self.dropped) if self.dropped else self.count

    def drop(self, seqs: set[int]) -> list[int]:
        """Leave out these seqs (those in its range) when read back; returns the ones it newly drops."""
        first, last = self.first_seq, self.last_seq
        dropped = self.dropped
        mine = self.seqs
        found = [
            seq
            for seq in seqs
            if first <= seq <= last and not (dropped and seq in dropped) and (mine is None or seq in mine)
        ]
        if found:
            self.dropped = (dropped or set()).union(found)
        return found

    @property
    def first_expires(self) -> float | None:
        if self.expires is None or math.isnan(self.expires[0]):
            return None
        return self.expires[0]


class PagedTail:
    """The part of a paged queue's ready list after its head: chunks, then what was published since."""

    __slots__ = ("chunks", "tail", "count", "body_bytes")

    def __init__(self) -> None:
        self.chunks: deque[Chunk] = deque()
        self.tail: deque[Entry] = deque()
        self.count = 0  # messages in chunks and tail
        self.body_bytes = 0  # their bodies (x-max-length-bytes counts them)

    def append(self, entry: Entry) -> None:
        self.tail.append(entry)
        self.count += 1
        self.body_bytes += len(entry.message.body)


class HeadLoading:
    """TAKE's reply when the head is empty and the next ready messages are still on disk: their chunk is
    being read back (a LOAD effect). The getter given to TAKE is told with a HEAD_READY effect once it is
    in memory (or gone), and asks again."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "HEAD_LOADING"


HEAD_LOADING = HeadLoading()


class HeadGetter(Protocol):
    """Whoever waits for a queue's head (a channel's held basic.get): told by the HEAD_READY effect."""

    def head_ready(self, queue: Any) -> None: ...


class Footprint:
    """What one queue's ready messages in memory take of the budget (see `footprint`): data the queue
    keeps and the pager reads. The queue adds and subtracts its own messages (one integer each, no
    allocation); once `used` passes `mark` it says so with a FOOTPRINT effect and stops saying so
    (`mark` becomes NEVER) until the pager, having looked at every queue's footprint, sets a new mark."""

    __slots__ = ("used", "mark")

    def __init__(self, mark: int) -> None:
        self.used = 0
        self.mark = mark


class PagedQueue(Protocol):
    """What the pager needs of a queue (Queue has it): the pager knows queues by this alone."""

    @property
    def journal(self) -> Journal: ...

    @property
    def memory(self) -> Footprint: ...

    def pageable(self) -> int: ...

    def page_out(self, want: int) -> int: ...

    def chunk_loaded(self, chunk: Chunk) -> None: ...


class Pager:
    """What a queue needs of the node's pager: the mark a new queue's footprint starts with, the chunk
    size, and the paging effects carried out (PAGE_OUT, LOAD, RELEASE, FOOTPRINT). The budget itself is
    the pager's: the sum of its queues' footprints (`used`), against `limit`.

    This base never pages (no queue's mark is ever passed): the pager of queues outside a node with a
    data directory. broker/pager.py has the real one.
    """

    __slots__ = ("limit", "share", "chunk_size")

    def __init__(self, limit: int = NEVER) -> None:
        self.limit = limit
        # How much more each queue may take before the pager looks at the budget again (set as it looks).
        self.share = limit
        # A chunk read back is a chunk in memory again: small next to the budget.
        self.chunk_size = max(MIN_CHUNK_SIZE, min(CHUNK_SIZE, limit // 8))

    @property
    def used(self) -> int:
        """The ready messages in memory of every queue (their footprints): none here."""
        return 0

    def first_mark(self) -> int:
        """A new queue's mark: its share, but no more than a chunk before the pager counts it in."""
        return NEVER if self.limit >= NEVER else min(self.share, self.chunk_size)

    def passed_mark(self, queue: PagedQueue) -> None:
        """A FOOTPRINT effect: `queue`'s footprint passed its mark; look at the budget soon (never from
        inside the queue's operation)."""

    def write_out(self, chunk: Chunk) -> None:
        """Take the chunk's entries (consecutive, in order) out of memory (a PAGE_OUT effect)."""
        raise NotImplementedError

    def load(self, queue: PagedQueue, chunk: Chunk) -> None:
        """Read `chunk` back (in a worker thread), then call `queue.chunk_loaded(chunk)` (a LOAD effect)."""
        raise NotImplementedError

    def load_now(self, queue: PagedQueue, chunk: Chunk) -> None:
        """Read `chunk` back here and now (blocking), into `chunk.entries`."""
        raise NotImplementedError

    def release(self, chunk: Chunk) -> None:
        """The chunk is back in memory or gone: what holds it on disk may go."""
        raise NotImplementedError


NO_PAGER = Pager()
