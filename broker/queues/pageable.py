"""How a queue pages out and reads back (the model is in paging.py): the part of Queue that only paged
queues use, apart so that queue.py stays about the FIFO and its consumers.

A queue with a lifecycle keeps its head in a FifoReady that counts its own budget: its lifecycle part
handles `_take_back_of_head`, `_new_chunk` (deadlines), `_chunk_entries` (TrackedEntry), `_add_to_head`
and `_unpage`.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import TYPE_CHECKING, Any

from leveret.broker.queues.effects import HEAD_READY, LOAD, PAGE_OUT, RELEASE, Effect
from leveret.broker.queues.paging import (
    OVERHEAD,
    READ_AHEAD,
    Chunk,
    Footprint,
    HeadGetter,
    HeadLoading,
    PagedTail,
    Pager,
    footprint,
)
from leveret.broker.queues.ready import take_back, take_front

if TYPE_CHECKING:
    from leveret.broker.queues.entry import Entry
    from leveret.broker.queues.journal import Journal
    from leveret.broker.queues.part import LifecyclePart
    from leveret.broker.queues.subscriber import Subscriber


class Pageable:
    # What it needs of the queue (Queue has them all).
    ready: Any  # the head: a deque, or a lifecycle queue's FifoReady
    paged: PagedTail | None
    pager: Pager
    memory: Footprint
    head_getters: list[HeadGetter]
    consumers: deque[Subscriber]
    journal: Journal
    returned_upto: int
    _consumers_full: bool
    effects: list[Effect]
    lifecycle: LifecyclePart | None

    if TYPE_CHECKING:

        def deliver_ready(self) -> None: ...

        def take(self, getter: HeadGetter | None = None) -> Entry | HeadLoading | None: ...

        def _flush(self) -> None: ...

        def _counted(self, entries: list[Entry]) -> None: ...

    def pageable(self) -> int:
        """How many ready messages in memory paging out could take, about: the pager takes the largest."""
        if self.lifecycle is not None and not self.lifecycle.pages:
            return 0
        paged = self.paged
        return len(self.ready) if paged is None else len(paged.tail)

    def page_out(self, want: int) -> int:
        """Page out about `want` bytes of budget from the back of the ready list (for a paged queue, the
        tail after its chunks); returns how much."""
        paged = self.paged
        if paged is not None:
            # The front of the tail: new chunks go right behind the others. (Tail entries are all above
            # `returned_upto`: published after anything that came back.)
            taken, sizes = take_front(paged.tail, want)
        else:
            taken, sizes = self._take_back_of_head(want, self._head_reserve() if self.consumers else 0)
        if not taken:
            return 0
        body_bytes = sum(sizes)
        freed = footprint(taken)
        if paged is None:
            paged = self.paged = PagedTail()
            paged.count = len(taken)
            paged.body_bytes = body_bytes
        else:
            self.memory.used -= freed  # the tail's leave here (the head's did as they were taken)
        # A chunk is read back whole: bound what it holds in memory (the budget's measure), not its bodies.
        limit = self.pager.chunk_size
        start = 0
        while start < len(taken):
            end, held = start + 1, taken[start].message.size + OVERHEAD
            while end < len(taken) and held < limit:
                held += taken[end].message.size + OVERHEAD
                end += 1
            paged.chunks.append(self._new_chunk(taken[start:end], sum(sizes[start:end])))
            start = end
        self._flush()
        return freed

    def restore_paged(self, chunks: list[Chunk]) -> None:
        """Recovered messages after the restored head, still in the log: read back in turn as chunks.
        Call after `restore`, before any publish."""
        if not chunks:
            return
        paged = self.paged = PagedTail()
        paged.chunks.extend(chunks)
        paged.count = sum(chunk.count for chunk in chunks)
        paged.body_bytes = sum(chunk.body_bytes for chunk in chunks)
        if self.lifecycle is not None:
            self.lifecycle.chunks_restored()

    def _head_reserve(self) -> int:
        """How many entries at the head a consumer will want before a chunk could be read back."""
        size = 0
        chunk_size = self.pager.chunk_size
        for count, entry in enumerate(self.ready):
            if size >= chunk_size:
                return count
            size += entry.message.size + OVERHEAD
        return len(self.ready)

    def _take_back_of_head(self, want: int, keep: int) -> tuple[list[Entry], list[int]]:
        """Entries off the back of the head to page out (no longer counted in the footprint), with their
        body sizes."""
        if self.lifecycle is not None:
            return self.lifecycle.take_back_of_head(want, keep)
        taken, sizes = take_back(self.ready, want, keep, self.returned_upto)
        self.memory.used -= footprint(taken)
        return taken, sizes

    def _new_chunk(self, entries: list[Entry], body_bytes: int) -> Chunk:
        if self.lifecycle is not None:
            return self.lifecycle.new_chunk(entries, body_bytes)
        chunk = Chunk(entries, body_bytes, None)
        self.effects.append((PAGE_OUT, chunk))
        return chunk

    def chunk_loaded(self, chunk: Chunk) -> None:
        """The pager read `chunk` back: install it when its turn comes, and deliver on."""
        if self.paged is not None and not chunk.gone:
            self._refill()
            if self.consumers and not self._consumers_full:
                self.deliver_ready()
        if self.lifecycle is not None:
            self.lifecycle.chunk_loaded(chunk)
        self._flush()

    def _refill(self) -> None:
        """Install the first chunk once the head holds less than a chunk's worth; read the next ones back
        while it holds less than READ_AHEAD chunks' worth, so they are in memory before they are due."""
        paged = self.paged
        assert paged is not None
        chunks = paged.chunks
        while chunks and len(self.ready) < chunks[0].count and chunks[0].entries is not None:
            self._install(chunks.popleft())
        if not chunks:
            self._unpage()
            return
        if len(self.ready) < READ_AHEAD * chunks[0].count:
            for chunk in itertools.islice(chunks, READ_AHEAD):
                if chunk.entries is None and not chunk.loading:
                    chunk.loading = True
                    self.effects.append((LOAD, chunk))

    def _fill_head(self, getter: HeadGetter | None) -> bool:
        """The head is empty and a basic.get wants it: install the first chunk if it is in memory (True);
        else have it read back (LOAD), and tell `getter` (HEAD_READY) once it is (False)."""
        paged = self.paged
        assert paged is not None and paged.chunks
        chunk = paged.chunks[0]
        if chunk.entries is None:
            if not chunk.loading:
                chunk.loading = True
                self.effects.append((LOAD, chunk))
            if getter is not None and getter not in self.head_getters:
                self.head_getters.append(getter)
            return False
        paged.chunks.popleft()
        self._install(chunk)
        if not paged.chunks:
            self._unpage()
        return True

    def _head_getters_ready(self) -> None:
        """A chunk joined the head (or every chunk went): the basic.gets waiting for it ask again."""
        getters, self.head_getters = self.head_getters, []
        self.effects.extend((HEAD_READY, getter) for getter in getters)

    def take_now(self) -> Entry | None:
        """basic.get for a caller that must answer at once (a cluster peer's call): a head on disk is read
        back here, blocking."""
        while True:
            entry = self.take()
            if not isinstance(entry, HeadLoading):
                return entry
            self._load_head_now()

    def _load_head_now(self) -> None:
        """The head is empty and someone needs it now (basic.get): read the first chunk here, blocking."""
        paged = self.paged
        assert paged is not None and paged.chunks
        chunk = paged.chunks.popleft()
        if chunk.entries is None:
            self.pager.load_now(self, chunk)
        self._install(chunk)
        if not paged.chunks:
            self._unpage()

    def _install(self, chunk: Chunk) -> None:
        """A chunk back in memory joins the head."""
        entries = self._chunk_entries(chunk)
        paged = self.paged
        assert paged is not None
        paged.count -= chunk.live
        paged.body_bytes -= chunk.body_bytes
        chunk.gone = True
        self.effects.append((RELEASE, chunk))
        self._add_to_head(entries)
        if self.head_getters:
            self._head_getters_ready()

    def _chunk_entries(self, chunk: Chunk) -> list[Entry]:
        """A read-back chunk's entries as the queue keeps them, but for those dropped meanwhile."""
        entries = chunk.entries
        assert entries is not None
        chunk.entries = None
        if self.lifecycle is not None:
            entries = self.lifecycle.tracked_from_chunk(chunk, entries)
        dropped = chunk.dropped
        if dropped:
            entries = [entry for entry in entries if entry.seq not in dropped]
        return entries

    def _add_to_head(self, entries: list[Entry]) -> None:
        """Entries read back join the head (after everything in it), counted against the budget."""
        if self.lifecycle is not None:
            self.lifecycle.add_to_head(entries)
            return
        self.ready.extend(entries)
        self._counted(entries)

    def _unpage(self) -> None:
        """The last chunk is back: the tail (counted already) joins the head; nothing is paged any more."""
        if self.lifecycle is not None:
            self.lifecycle.unpage()
            return
        paged = self.paged
        assert paged is not None
        self.paged = None
        self.ready.extend(paged.tail)

    def _drop_paged(self, *, removed: str | None) -> list[Entry]:
        """Forget every paged-out message (purge, delete). Returns those still in memory; `removed`: the
        reason to tell the journal the logged ones that are not went for (by seq range: a chunk holds
        every seq in it)."""
        paged = self.paged
        assert paged is not None
        self.paged = None
        in_memory = list(paged.tail)
        self.memory.used -= footprint(in_memory)
        if self.head_getters:
            self._head_getters_ready()
        for chunk in paged.chunks:
            chunk.gone = True
            if chunk.entries is not None:
                in_memory += chunk.entries
            elif removed is not None and chunk.locations is not None:
                self.journal.removed_range(chunk.first_seq, chunk.last_seq, removed)
            self.effects.append((RELEASE, chunk))
        return in_memory
