"""The node's pager: keeps the ready messages held in memory within `resources.message_memory_budget` by
paging out the largest backlogs, and reads chunks back for the queues (broker/queues/paging.py).

Where a paged-out message goes: a persistent message on a durable queue is in its queue's log already, so
its chunk only remembers the record's location; any other goes to the page files (store/pages.py). A
chunk keeps its entries in memory until that copy is safe to read: its page file write done, its log
records durable (the group commit's `durable_position`).

Synchronous like the rest of the domain. The server's pager task (broker/server/pager.py) calls `begin`
on the loop, which pages out when over budget and gathers the I/O due; runs `PagerWork.run` in a worker
thread (writes, reads, deletions); and calls `complete` on the loop, which hands read chunks to their
queues. basic.get on an empty head waits for that read like the rest (a LOAD effect, answered on
HEAD_READY); only a caller that must answer at once (a cluster peer's basic.get, a length limit dropping
from an empty head) reads with `load_now`, on the loop: one chunk, about a MiB, usually in the page cache.

The budget is the sum of the queues' own footprints (`used`): read when a queue passes the mark it was
given (FOOTPRINT) and every second, when the pager shares what is left of the budget out as new marks.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from leveret.broker.alarms import memory_limit
from leveret.broker.message import Message
from leveret.broker.queues.entry import Entry
from leveret.broker.queues.paging import Chunk, PagedQueue, Pager
from leveret.broker.store import Store, records
from leveret.broker.store.pages import PageFiles, PageIO
from leveret.broker.store.reader import Enqueued, read_page

if TYPE_CHECKING:
    from leveret.config.schema import Resources

log = logging.getLogger(__name__)

# Page out this much below the budget at a time (at most): fewer, larger page-outs, each one short
# enough to do on the event loop (framing 4 MiB of records takes a few milliseconds).
MAX_PAGE_OUT = 4 * 1024 * 1024
# The budget when it is a fraction of a watermark that is a fraction of a total memory nobody could read.
FALLBACK_BUDGET = 1 << 30


def message_budget(resources: Resources, total_memory: int | None) -> int:
    """`resources.message_memory_budget` in bytes: a size, or a fraction of the memory high watermark."""
    budget = resources.message_memory_budget
    if not isinstance(budget, float):
        return memory_limit(budget, 0)
    watermark = resources.memory_high_watermark
    if isinstance(watermark, float) and total_memory is None:
        log.warning("total memory unknown: the message memory budget is %d MiB", FALLBACK_BUDGET >> 20)
        return FALLBACK_BUDGET
    return int(memory_limit(watermark, total_memory or 0) * budget)


def split_names(names_raw: bytes) -> tuple[str, str]:
    """Exchange and routing key from the two short strings of a delivery (amqp.fastpath.names_raw)."""
    length = names_raw[0]
    return names_raw[1 : 1 + length].decode(), names_raw[2 + length :].decode()


def entry_from_record(
    record: Enqueued, logged: int, redelivered: bool, wire: dict[tuple[str, str], bytes]
) -> Entry:
    """An entry for a message read back from disk; `wire` shares one encoded exchange and routing key
    among the messages of one read."""
    seq, exchange, routing_key, properties_raw, body = record
    names = wire.get((exchange, routing_key))
    message = Message(exchange, routing_key, properties_raw, body, names)
    if names is None:
        wire[(exchange, routing_key)] = message.names_raw
    entry = Entry(message, seq, redelivered)
    entry.logged = logged
    return entry


class _Read:
    """One chunk to read back: what the worker thread needs, and what it found."""

    __slots__ = ("queue", "chunk", "run", "locations", "read_logged", "found")

    def __init__(self, queue: PagedQueue, chunk: Chunk) -> None:
        self.queue = queue
        self.chunk = chunk
        # Copied here: the loop may drop the chunk's run (a purge) while the worker reads.
        self.run = chunk.run
        self.locations = chunk.locations
        # Where logged messages are read from: the queue's log (or a replicated queue's replica files).
        self.read_logged = queue.journal.read_enqueues if chunk.locations is not None else None
        self.found: list[Entry | None] = []

    def read(self) -> None:
        """Blocking. Entries in chunk order, None where one could not be read (logged)."""
        chunk = self.chunk
        run = self.run
        locations = self.locations
        if locations is None and chunk.redelivered is None and run is not None:
            self.found = self._fresh_page(read_page(run.path, run.offset, run.length) or [], chunk.count)
            return
        page = iter(self._page_records())
        wanted = [at for at in locations if at] if locations else []
        read_logged = self.read_logged
        logged = iter(read_logged(wanted) if read_logged is not None and wanted else ())
        redelivered = chunk.redelivered
        found = self.found
        wire: dict[tuple[str, str], bytes] = {}
        for index in range(chunk.count):
            at = locations[index] if locations is not None else 0
            record = next(logged, None) if at else next(page, None)
            if record is None:
                found.append(None)
                continue
            found.append(entry_from_record(record, at, bool(redelivered and redelivered[index]), wire))

    def _page_records(self) -> list[Enqueued]:
        """The page run's messages as the log's records are read: (seq, exchange, routing key, ...)."""
        run = self.run
        if run is None:
            return []
        names: dict[bytes, tuple[str, str]] = {}
        records_ = []
        for seq, names_raw, properties_raw, body in read_page(run.path, run.offset, run.length) or ():
            exchange, routing_key = names.get(names_raw) or names.setdefault(
                names_raw, split_names(names_raw)
            )
            records_.append((seq, exchange, routing_key, properties_raw, body))
        return records_

    @staticmethod
    def _fresh_page(messages: list[tuple[int, bytes, bytes, bytes]], count: int) -> list[Entry | None]:
        """The common case, kept tight: a run of transient messages none of which was delivered yet."""
        names: dict[bytes, tuple[str, str]] = {}
        found: list[Entry | None] = []
        append = found.append
        for seq, names_raw, properties_raw, body in messages:
            split = names.get(names_raw)
            if split is None:
                split = names[names_raw] = split_names(names_raw)
            append(Entry(Message(split[0], split[1], properties_raw, body, names_raw), seq))
        found += [None] * (count - len(found))
        return found


class PagerWork:
    """One round of paging I/O: page file writes and deletions, and chunk reads."""

    def __init__(self, io: PageIO | None, written: list[Chunk], reads: list[_Read]) -> None:
        self.io = io
        self.written = written  # chunks whose page file run this round writes
        self.reads = reads

    def run(self) -> None:
        """Blocking: in a worker thread. Touches only files and what it was handed."""
        if self.io is not None:
            self.io.run()
        for read in self.reads:
            read.read()


class NodePager(Pager):
    def __init__(
        self,
        limit: int,
        page_files: PageFiles,
        queues: Callable[[], Iterable[PagedQueue]],
        store: Store | None = None,
    ) -> None:
        super().__init__(limit)
        self._slack = min(limit // 4, MAX_PAGE_OUT)
        self.share = limit // 8  # until the first look at the budget: see `first_mark`
        self.page_files = page_files
        self._queues = queues
        self._store = store  # the durable queues' logs, when the node has a store
        self._page_out_due = False
        self._reads: list[_Read] = []
        self._writing: list[Chunk] = []  # their page file run is not written yet
        self._undurable: list[Chunk] = []  # their log records are not durable yet
        self.wake: Callable[[], None] = lambda: None  # the server's pager task sets this

    # ---- the budget ---------------------------------------------------------------------------

    @property
    def used(self) -> int:
        return sum(queue.memory.used for queue in self._queues())

    def passed_mark(self, queue: PagedQueue) -> None:
        # From the middle of a command's effects: page out later, from the pager task.
        self._page_out_due = True
        self.wake()

    def tick(self) -> None:
        """Now and then (the pager task): look at the budget with the next `begin`, so that a budget left
        exceeded (nothing could be paged out then) is tried again, and the marks follow the queues that
        came and went."""
        self._page_out_due = True

    def page_out_now(self) -> None:
        """Page out the largest backlogs until the ready messages in memory are a little under budget; then
        share out what is left of the budget as the queues' new marks."""
        self._page_out_due = False
        queues = list(self._queues())
        used = sum(queue.memory.used for queue in queues)
        target = self.limit - self._slack
        if used > target:
            for queue in sorted(queues, key=lambda queue: queue.pageable(), reverse=True):
                if used <= target or not queue.pageable():
                    break
                used -= queue.page_out(used - target)
        # Each queue may add an equal part of the room left before the pager looks again (nothing more to
        # page out: after another slack's worth, or at the next tick).
        room = self.limit - used if used <= self.limit else self._slack
        self.share = share = room // max(len(queues), 1)
        for queue in queues:
            memory = queue.memory
            memory.mark = memory.used + share

    # ---- chunks -------------------------------------------------------------------------------

    def write_out(self, chunk: Chunk) -> None:
        entries = chunk.entries
        assert entries is not None
        transient = [entry for entry in entries if entry.logged <= 0]  # -1: replicated, not in the store
        if transient:
            chunk.run = self.page_files.append(
                records.page_parts(
                    (entry.seq, entry.message.names_raw, entry.message.properties_raw, entry.message.body)
                    for entry in transient
                )
            )
            self._writing.append(chunk)
        if len(transient) < len(entries):
            # (-1, a replicated queue's new message, is in the page run: 0.)
            chunk.locations = array("q", (max(entry.logged, 0) for entry in entries))
            assert self._store is not None, "a logged entry without a store"
            chunk.position = self._store.append_position
            if not transient:
                self._undurable.append(chunk)
        if not transient:
            self.commit_completed()

    def load(self, queue: PagedQueue, chunk: Chunk) -> None:
        self._reads.append(_Read(queue, chunk))
        self.wake()

    def load_now(self, queue: PagedQueue, chunk: Chunk) -> None:
        read = _Read(queue, chunk)
        read.read()
        chunk.entries = self._readable(chunk, read.found)

    def release(self, chunk: Chunk) -> None:
        run = chunk.run
        if run is not None:
            chunk.run = None
            self.page_files.release(run)

    # ---- I/O rounds ---------------------------------------------------------------------------

    def begin(self) -> PagerWork | None:
        """On the loop: page out if due, then gather the I/O to do (None: nothing)."""
        if self._page_out_due:
            self.page_out_now()
        io = self.page_files.take_io()
        written, self._writing = self._writing, []
        reads = [read for read in self._reads if not read.chunk.gone]
        self._reads = []
        if io is None and not reads:
            return None
        return PagerWork(io, written, reads)

    def complete(self, work: PagerWork) -> None:
        """On the loop, after `work.run`: written chunks leave memory, read ones go to their queues."""
        failed = work.io.failed if work.io is not None else set()
        for chunk in work.written:
            if chunk.gone:
                continue
            if chunk.run is not None and chunk.run.file.index in failed:
                # Its copy is unreadable: the chunk stays in memory (and is read back from there).
                self.release(chunk)
                continue
            if chunk.locations is not None:
                self._undurable.append(chunk)
            else:
                chunk.entries = None
        self.commit_completed()
        for read in work.reads:
            self._deliver(read)

    def _deliver(self, read: _Read) -> None:
        chunk = read.chunk
        chunk.loading = False
        if chunk.gone:
            return
        chunk.entries = self._readable(chunk, read.found)
        read.queue.chunk_loaded(chunk)

    def _readable(self, chunk: Chunk, found: list[Entry | None]) -> list[Entry]:
        """The entries read back; those that could not be are lost (and logged by the reader)."""
        entries = [entry for entry in found if entry is not None]
        if len(entries) < len(found):
            log.error("%d paged-out messages could not be read back and are lost", len(found) - len(entries))
            if chunk.expires is not None:
                chunk.expires = array("d", (when for when, e in zip(chunk.expires, found, strict=True) if e))
            if chunk.returns is not None:
                chunk.returns = array("q", (n for n, e in zip(chunk.returns, found, strict=True) if e))
        return entries

    def commit_completed(self) -> None:
        """The store made more appends durable: chunks waiting for their log records can leave memory."""
        if not self._undurable:
            return
        durable = self._store.durable_position if self._store is not None else 0
        waiting = []
        for chunk in self._undurable:
            if chunk.gone:
                continue
            if chunk.position <= durable:
                chunk.entries = None
            else:
                waiting.append(chunk)
        self._undurable = waiting
