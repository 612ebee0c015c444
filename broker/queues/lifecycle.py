"""A queue's lifecycle part (Queue.lifecycle), by RabbitMQ 3.10's rules: message TTL (the queue's and each
message's, the lower wins), queue expiry when unused, length limits with their overflow modes,
dead-lettering, priorities, consumer priorities, single active consumer, and the delivery count of quorum
queues.

Messages expire at the head only, as in RabbitMQ: one behind a message that lives longer waits until it
reaches the head (so it is never delivered, but counts in message_count until then). The queue keeps one
deadline with the node's timers, the earlier of its heads' expiry and its own, never one per message.
"""

from __future__ import annotations

import itertools
import math
from array import array
from collections import deque
from typing import TYPE_CHECKING, Any

from leveret.broker.message import Message
from leveret.broker.queues.dead_letter import DELIVERY_LIMIT, EXPIRED, MAXLEN, REJECTED
from leveret.broker.queues.delivery_count import DeliveryCount
from leveret.broker.queues.dispatch import ByPriority, SingleActive
from leveret.broker.queues.effects import ARM, DEAD_LETTER, DELIVER, DISARM, LOAD, PAGE_OUT, RELEASE, REMOVE
from leveret.broker.queues.entry import Entry, TrackedEntry, published
from leveret.broker.queues.expiry import deadline
from leveret.broker.queues.journal import PURGED
from leveret.broker.queues.outbox import Outbox
from leveret.broker.queues.paging import HEAD_LOADING, OVERHEAD, Chunk, HeadGetter, HeadLoading, footprint
from leveret.broker.queues.ready import FifoReady, PriorityReady
from leveret.broker.queues.settings import REJECT_PUBLISH_DLX, QueueSettings
from leveret.broker.queues.subscriber import DELIVERY_OVERHEAD

if TYPE_CHECKING:
    from collections.abc import Iterable

    from leveret.broker.queues.queue import Queue
    from leveret.broker.queues.subscriber import Subscriber

# At most this many expired messages are removed per timer call, so that a queue expiring a million
# messages at once (dead-lettering each) lets the event loop serve connections in between.
EXPIRY_BATCH = 2048


def needs_lifecycle(arguments: dict[str, Any]) -> bool:
    """Whether a queue declared with `arguments` needs its lifecycle from the start."""
    return not QueueSettings.from_arguments(arguments).plain


class Lifecycle:
    """The part of a queue that has a lifecycle (Queue.lifecycle): made when the queue is declared with
    lifecycle arguments, or when a plain queue first needs one (a message with an `expiration`, a consumer
    with a priority, recovered messages with deadlines). It takes over the queue's ready list (a FifoReady
    or PriorityReady) and consumer dispatch, and the queue hands it the operations those change."""

    def __init__(self, queue: Queue) -> None:
        assert queue.host is not None, "a queue's lifecycle needs its vhost"
        assert queue.lifecycle is None
        self.queue = queue
        settings = self.settings = QueueSettings.from_arguments(queue.effective_arguments)
        # Whether any message may expire: until then, deliveries need not read the clock.
        self._expiring = settings.message_ttl is not None
        self._expires_at: float | None = None  # when the queue goes if still unused
        entries = queue._clear_head()  # the plain queue's deque
        priorities = settings.max_priority
        self.ready: FifoReady | PriorityReady = (
            FifoReady(queue.memory) if priorities is None else PriorityReady(priorities, queue.memory)
        )
        # Priority queues do not page out (a recovered backlog keeps chunks in the log, per level).
        self.pages = priorities is None
        queue.ready = self.ready  # type: ignore[assignment]  # the queue's deque no more
        queue.lifecycle = self
        now = self.queue.clock()
        for entry in entries:
            self.ready.append(self._track(entry, now))
        if self.queue.paged is not None:  # a paged plain queue: its chunks hold no deadlines, nor need any
            self.queue.paged.tail = deque(self._track(entry, now) for entry in self.queue.paged.tail)
        # Subscribers by priority, highest first; round-robin within each.
        self.dispatch = SingleActive() if settings.single_active_consumer else ByPriority()
        self.counts = DeliveryCount(settings.delivery_limit) if settings.counts_deliveries else None
        # Dead-lettered messages kept until their targets have them (at-least-once; see outbox.py).
        self.outbox = Outbox() if settings.at_least_once else None
        for consumer in queue.consumers:
            self.dispatch.join(consumer)
        self.touch()

    def settings_changed(self) -> None:
        """The queue's effective arguments changed (a policy): follow them from now on, as RabbitMQ does.
        Messages keep the deadlines they were given; a lower length limit drops (drop-head) at once.
        Priorities, single active consumer and the queue type are arguments only, never a policy's."""
        settings = self.settings = QueueSettings.from_arguments(self.queue.effective_arguments)
        self._expiring = self._expiring or settings.message_ttl is not None
        if settings.expires is None:
            self._expires_at = None
        else:
            self.touch()
        if self.counts is not None:
            self.counts.limit = settings.delivery_limit
        if settings.at_least_once and self.outbox is None:
            self.outbox = Outbox()
        elif not settings.at_least_once and self.outbox is not None and not len(self.outbox):
            self.outbox = None
        if settings.limited and settings.overflow == "drop-head":
            self._drop_over_limit()
        self._reschedule()
        self.queue._flush()

    def _track(self, entry: Entry, now: float) -> TrackedEntry:
        tracked = TrackedEntry.adopt(entry, deadline(entry.message, self.settings.message_ttl, now))
        if tracked.expires is not None:
            self._expiring = True
        return tracked

    def _track_recovered(self, entry: Entry, now: float, left: float | None) -> TrackedEntry:
        """A recovered entry whose logged deadline leaves it `left` seconds (None: none was logged, as in
        logs from before deadlines were kept, when its TTL counts from the recovery). Never longer than
        its whole TTL from now, should the wall clock have gone back meanwhile."""
        if left is None:
            return self._track(entry, now)
        expires = deadline(entry.message, self.settings.message_ttl, now)
        tracked = TrackedEntry.adopt(entry, now + left if expires is None else min(expires, now + left))
        self._expiring = True
        return tracked

    # ---- messages ---------------------------------------------------------------------------

    def enqueue(self, message: Message) -> int | None:
        settings = self.settings
        ready = self.ready
        paged = self.queue.paged
        if settings.limited and settings.overflow != "drop-head":
            if self._over_limit(self.queue.message_count + 1, self._ready_bytes() + len(message.body)):
                if settings.overflow == REJECT_PUBLISH_DLX:
                    self._dead_letter([message], MAXLEN)
                return None
        now = self.queue.clock()
        expires = deadline(message, settings.message_ttl, now)
        entry = TrackedEntry(message, next(self.queue._seq), expires)
        # The journal gets the time left: a durable log keeps it across a restart.
        expires_in = None
        if expires is not None:
            self._expiring = True
            expires_in = expires - now
        at_head = not ready and paged is None
        if at_head and self.queue.consumers and not self.queue._consumers_full:
            consumer = self.dispatch.next()
            if consumer is not None:
                position = self.queue.journal.enqueued(entry, expires_in)
                self._hand_over(consumer, entry)
                self.queue._flush()
                return position
            self.queue._consumers_full = True
        if at_head and expires is not None and expires <= now:
            # Expired on arrival (a TTL of 0 and no consumer ready for it): never stored.
            self._dead_letter([message], EXPIRED)
            return 0
        position = self.queue.journal.enqueued(entry, expires_in)
        if paged is not None:
            paged.append(entry)
            self.queue.memory.used += message.size + OVERHEAD
        else:
            ready.append(entry)
            if len(ready) == 1:
                self._reschedule()
        if settings.limited and settings.overflow == "drop-head":
            self._drop_over_limit()
        if self.queue.consumers and not self.queue._consumers_full:
            self.deliver_ready()
        self._check_budget()
        self.queue._flush()
        return position

    def restore(
        self,
        entries: Iterable[Entry],
        next_seq: int,
        expires_in: list[float | None] | None = None,
        returns: list[int] | None = None,
    ) -> None:
        # Nothing expires here: dead-lettering waits for the timers, once every queue and binding is back.
        now = self.queue.clock()
        if expires_in is None:
            tracked = [self._track(entry, now) for entry in entries]
        else:
            tracked = [
                self._track_recovered(entry, now, left)
                for entry, left in zip(entries, expires_in, strict=True)
            ]
        if returns is not None:
            for entry, count in zip(tracked, returns, strict=True):
                if self.counts is not None:
                    self.counts.recovered(entry, count)
                else:
                    entry.deliveries = count
        for entry in tracked:
            self.ready.append(entry)
        self.queue._seq = itertools.count(next_seq)
        self._reschedule()
        self._check_budget()
        self.queue._flush()

    def take(self, getter: HeadGetter | None = None) -> Entry | HeadLoading | None:
        self.touch()
        ready = self.ready
        now = self.queue.clock()
        self._expire_all(now)
        while not ready and self.queue.paged is not None:
            if not self.queue._fill_head(getter):
                self.queue._flush()
                return HEAD_LOADING
            self._expire_all(now)
        if not ready:
            self.queue._flush()
            return None
        entry = ready.popleft()
        self.queue._leaving(entry, ack_required=True)
        if self.counts is not None:
            self.counts.taken(entry)
        if self.queue.paged is not None:
            self.queue._refill()
        self._reschedule()
        self.queue._flush()
        return entry

    def rejected(self, entries: list[Entry]) -> None:
        """Unacked messages rejected without requeue: to the dead-letter exchange, if any."""
        if not self.queue.deleted:
            self._dead_letter([published(entry) for entry in entries], REJECTED, list(entries))

    def requeue(self, seqs: Iterable[int]) -> None:
        now = self.queue.clock()
        returned = [self._track(entry, now) for entry in self.queue._returned(seqs)]
        if self.queue.deleted or not returned:
            return
        self.queue.journal.returned(returned)
        self.queue.returned_upto = max(self.queue.returned_upto, returned[-1].seq)
        if self.counts is not None:
            returned, spent = self.counts.returned(returned)
            if spent:
                self._discard(spent, DELIVERY_LIMIT)
        self.ready.requeue(returned)
        if self.settings.limited and self.settings.overflow == "drop-head":
            self._drop_over_limit()
        self._expire_all(now)
        self.queue.credit_changed()
        self._reschedule()
        self._check_budget()
        self.queue._flush()

    def deleted(self) -> None:
        if self.outbox is not None:
            self.outbox.clear()
        self.queue.effects.append((DISARM,))
        self.queue._flush()

    def tick(self) -> None:
        self.on_deadline(self.queue.clock())

    def touch(self) -> None:
        expires = self.settings.expires
        if expires is not None and not self.queue.consumers:
            self._expires_at = self.queue.clock() + expires / 1000
            self._reschedule()

    def on_deadline(self, now: float) -> None:
        """The node's timers call this at (or after) the deadline this queue asked for."""
        if self.queue.deleted:
            return
        if self._expires_at is not None and self._expires_at <= now and not self.queue.consumers:
            self.queue.effects.append((REMOVE,))
            self.queue._flush()
            return
        if self.outbox is not None:
            forward = self.outbox.retry(now)
            if forward is not None:
                self.queue.effects.append(forward)
        if self._expiring and self._expire(now):
            self.queue.effects.append((ARM, now))  # more to do after the loop has served others
        else:
            self._reschedule()
        self.queue._flush()

    # ---- consumers --------------------------------------------------------------------------

    def add_consumer(self, consumer: Subscriber) -> None:
        self.queue.consumers.append(consumer)
        self.queue.had_consumers = True
        self.dispatch.join(consumer)
        self.queue.credit_changed()

    def remove_consumer(self, consumer: Subscriber) -> None:
        if consumer not in self.queue.consumers:
            return
        self.queue.consumers.remove(consumer)
        handed_on = self.dispatch.leave(consumer)
        if not self.queue.consumers:
            self.touch()
        if handed_on:
            self.queue.credit_changed()

    def deliver_ready(self) -> None:
        ready = self.ready
        expiring = self._expiring
        now = self.queue.clock() if expiring else 0.0
        full = False
        while True:
            while ready:
                if expiring:
                    expires = ready.peek().expires
                    if expires is not None and expires <= now:
                        self._expire(now)
                        continue
                consumer = self.dispatch.next()
                if consumer is None:
                    self.queue._consumers_full = full = True
                    break
                self._hand_over(consumer, ready.popleft())
            if self.queue.paged is None:
                break
            self.queue._refill()
            if full or not ready:
                break
            # The head ran dry and a chunk read back joined it just now: deliver on from it.
        self._reschedule()
        self.queue._flush()

    def _hand_over(self, consumer: Subscriber, entry: Entry) -> None:
        self.queue._leaving(entry, ack_required=not consumer.no_ack)
        consumer.credit -= 1
        if consumer.pool is not None:
            consumer.pool.left -= 1
        consumer.output.left -= entry.message.size + DELIVERY_OVERHEAD
        self.queue.effects.append((DELIVER, consumer, entry))

    # ---- paging (see paging.py) -------------------------------------------------------------

    def _ready_bytes(self) -> int:
        """Body bytes of every ready message, paged out or not (x-max-length-bytes)."""
        paged = self.queue.paged
        return self.ready.bytes if paged is None else self.ready.bytes + paged.body_bytes

    def _check_budget(self) -> None:
        memory = self.queue.memory
        if memory.used > memory.mark:
            self.queue._passed_mark()

    def clear_head(self) -> list[Entry]:
        if isinstance(self.ready, PriorityReady):
            for chunk in self.ready.take_chunks():
                chunk.gone = True
                if chunk.seqs is not None:
                    self.queue.journal.removed_seqs(chunk.seqs, PURGED)
                self.queue.effects.append((RELEASE, chunk))
        return list(self.ready.clear())

    def remove_from_head(self, seqs: set[int]) -> list[Entry]:
        gone: list[Entry] = list(self.ready.remove(seqs))
        if gone:
            self._reschedule()
        return gone

    def take_back_of_head(self, want: int, keep: int) -> tuple[list[Entry], list[int]]:
        assert isinstance(self.ready, FifoReady)
        taken, sizes = self.ready.take_back(want, keep, self.queue.returned_upto)
        return list(taken), sizes

    def new_chunk(self, entries: list[Entry], body_bytes: int) -> Chunk:
        expires = None
        if self._expiring:
            deadlines = (entry.expires for entry in entries)  # type: ignore[attr-defined]
            expires = array("d", (math.nan if when is None else when for when in deadlines))
        chunk = Chunk(entries, body_bytes, expires)
        deliveries = [entry.deliveries for entry in entries]  # type: ignore[attr-defined]
        if any(deliveries):  # read back from the log, a message would lose its count
            chunk.returns = array("q", deliveries)
        self.queue.effects.append((PAGE_OUT, chunk))
        return chunk

    def tracked_from_chunk(self, chunk: Chunk, entries: list[Entry]) -> list[Entry]:
        """A chunk's entries read back, with their deadlines and delivery counts."""
        expires = chunk.expires
        if expires is None:
            tracked = [TrackedEntry.adopt(entry, None) for entry in entries]
        else:
            tracked = []
            for entry, when in zip(entries, expires, strict=True):
                tracked.append(TrackedEntry.adopt(entry, None if math.isnan(when) else when))
                if not math.isnan(when):
                    self._expiring = True
        if chunk.returns is not None:
            for entry, count in zip(tracked, chunk.returns, strict=True):
                if self.counts is not None:
                    self.counts.recovered(entry, count)
                else:
                    entry.deliveries = count
        return tracked  # type: ignore[return-value]  # tracked ones

    def add_to_head(self, entries: list[Entry]) -> None:
        for entry in entries:
            self.ready.append(entry)  # type: ignore[arg-type]  # tracked ones
        self._check_budget()

    def unpage(self) -> None:
        paged = self.queue.paged
        assert paged is not None
        self.queue.paged = None
        tail = list(paged.tail)
        # Counted already, and again by the head's append.
        self.queue.memory.used -= footprint(tail)
        self.add_to_head(tail)

    def chunks_restored(self) -> None:
        """Recovery left chunks in the log behind the head: their deadlines count from now on."""
        paged = self.queue.paged
        assert paged is not None
        if any(chunk.expires is not None for chunk in paged.chunks):
            self._expiring = True
        self._reschedule()

    def restore_levels(self, chunks: dict[int, list[Chunk]]) -> None:
        """Recovery left a priority queue's backlog past the budget in the log: chunks per level."""
        assert isinstance(self.ready, PriorityReady)
        self.ready.restore_paged(chunks, self)
        if any(chunk.expires is not None for level in chunks.values() for chunk in level):
            self._expiring = True
        self._reschedule()

    def chunk_loaded(self, chunk: Chunk) -> None:
        if isinstance(self.ready, PriorityReady) and not chunk.gone:
            self.ready.chunk_loaded(chunk)
            if self.queue.consumers and not self.queue._consumers_full:
                self.deliver_ready()
        # Messages that expired on disk go now, before the pager could take them out again.
        self._expire_all(self.queue.clock())
        self._reschedule()

    # A priority queue's ready list reads its levels' chunks back through these (ready.ChunkSource).

    def read_ahead(self, chunk: Chunk) -> None:
        self.queue.effects.append((LOAD, chunk))

    def read_now(self, chunk: Chunk) -> None:
        self.queue.pager.load_now(self.queue, chunk)

    def entries_of(self, chunk: Chunk) -> list[TrackedEntry]:
        entries = self.queue._chunk_entries(chunk)
        chunk.gone = True
        self.queue.effects.append((RELEASE, chunk))
        return entries  # type: ignore[return-value]  # tracked ones

    # ---- removal ----------------------------------------------------------------------------

    def _over_limit(self, count: int, size: int) -> bool:
        settings = self.settings
        if self.outbox is not None:  # held dead-letters count, as in RabbitMQ
            count += len(self.outbox)
            size += self.outbox.bytes
        return (settings.max_length is not None and count > settings.max_length) or (
            settings.max_length_bytes is not None and size > settings.max_length_bytes
        )

    def _drop_over_limit(self) -> None:
        ready = self.ready
        dropped = []
        while self._over_limit(self.queue.message_count, self._ready_bytes()):
            if not ready:
                if self.queue.paged is None:
                    break
                self.queue._load_head_now()  # blocking, once per chunk: the head is dropped faster than read
                continue
            dropped.append(ready.popleft())
        if dropped:
            self._discard(dropped, MAXLEN)
            self._reschedule()

    def _expire(self, now: float) -> bool:
        """Remove the expired messages at the head; True when the batch limit left more."""
        expired = self.ready.pop_expired(now, EXPIRY_BATCH)
        if expired:
            self._discard(expired, EXPIRED)
        if not self.ready and self.queue.paged is not None:
            self.queue._refill()  # the next deadline is in the first chunk: read it back
        return len(expired) == EXPIRY_BATCH

    def _expire_all(self, now: float) -> None:
        if self._expiring:
            while self._expire(now):
                pass

    def _discard(self, entries: list[TrackedEntry], reason: str) -> None:
        """Entries gone for good from the ready list: journal them removed (an at-least-once queue once
        their dead-letter targets have them), dead-letter them."""
        if self.outbox is None:
            self.queue.journal.removed(entries, reason)
        self._dead_letter([entry.published for entry in entries], reason, list(entries))

    def _dead_letter(
        self, messages: list[Message], reason: str, entries: list[Entry] | None = None
    ) -> None:
        """`entries`: the stored entries the messages were, when they were stored."""
        if self.outbox is not None:
            held: list[Entry | None] = [None] * len(messages) if entries is None else list(entries)
            if entries:  # logged as held first: a restart brings them back held, not ready
                self.queue.journal.dead_lettering(entries, reason)
            self.queue.effects.append(self.outbox.add(held, messages, reason, self.queue.clock()))
            self._reschedule()
            self.queue._flush()
        elif self.settings.dead_letter_exchange is not None:
            self.queue.effects.append((DEAD_LETTER, messages, reason))
            self.queue._flush()

    def restore_held(self, entries: list[Entry], reasons: list[str]) -> None:
        """Dead-lettered at least once and still held when the broker stopped: held again, and forwarded
        when the node's timers first run. (A queue without an outbox now, its arguments having changed,
        lets them go as dead-lettered.)"""
        if self.outbox is None:
            for entry, reason in zip(entries, reasons, strict=True):
                self.queue.journal.removed([entry], reason)
            return
        self.outbox.restore(entries, reasons, self.queue.clock())
        self._reschedule()

    def dead_lettered(self, ids: list[int]) -> None:
        """Every target queue has these dead-lettered messages now: they leave the queue for good."""
        if self.outbox is None:
            return
        for reason, entries in self.outbox.done(ids).items():
            self.queue.journal.removed(entries, reason)
        self.queue._flush()

    def _reschedule(self) -> None:
        when = None
        if self._expiring:
            paged = self.queue.paged
            when = self.ready.next_expiry() if self.ready or paged is None else paged.chunks[0].first_expires
        expires_at = self._expires_at
        if expires_at is not None and not self.queue.consumers and (when is None or expires_at < when):
            when = expires_at
        retry_at = self.outbox.retry_at if self.outbox is not None else None
        if retry_at is not None and (when is None or retry_at < when):
            when = retry_at
        if when is not None:
            self.queue.effects.append((ARM, when))
            self.queue._flush()
