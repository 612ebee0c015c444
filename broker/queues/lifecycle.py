"""A queue with a message lifecycle, by RabbitMQ 3.10's rules: message TTL (the queue's and each message's,
the lower wins), queue expiry when unused, length limits with their overflow modes, dead-lettering,
priorities, consumer priorities, single active consumer, and the delivery count of quorum queues.

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

from leveret.amqp import tables
from leveret.amqp.properties import HEADERS, join_properties, split_properties
from leveret.broker.message import Message
from leveret.broker.queues.arguments import queue_type
from leveret.broker.queues.dead_letter import DELIVERY_LIMIT, EXPIRED, MAXLEN, REJECTED, dead_letter
from leveret.broker.queues.expiry import deadline
from leveret.broker.queues.paging import OVERHEAD, Chunk
from leveret.broker.queues.queue import Entry, Queue
from leveret.broker.queues.ready import FifoReady, PriorityReady, seq_of
from leveret.broker.queues.settings import REJECT_PUBLISH_DLX, QueueSettings

if TYPE_CHECKING:
    from collections.abc import Iterable

    from leveret.broker.queues.consumer import Consumer

# At most this many expired messages are removed per timer call, so that a queue expiring a million
# messages at once (dead-lettering each) lets the event loop serve connections in between.
EXPIRY_BATCH = 2048


class TrackedEntry(Entry):
    """An entry with what the lifecycle needs: its expiry deadline, how often it came back (the quorum
    delivery count), and the message as published (`message` may be a copy with x-delivery-count)."""

    __slots__ = ("expires", "deliveries", "published")

    def __init__(self, message: Message, seq: int, expires: float | None) -> None:
        super().__init__(message, seq)
        self.expires = expires
        self.deliveries = 0
        self.published = message

    @classmethod
    def adopt(cls, entry: Entry, expires: float | None) -> TrackedEntry:
        """A plain entry (recovered, or from before the queue took on a lifecycle) as a tracked one."""
        if isinstance(entry, TrackedEntry):
            return entry
        tracked = cls.__new__(cls)
        for slot in Entry.__slots__:
            setattr(tracked, slot, getattr(entry, slot))
        tracked.expires = expires
        tracked.deliveries = 0
        tracked.published = entry.message
        return tracked


def published(entry: Entry) -> Message:
    return entry.published if isinstance(entry, TrackedEntry) else entry.message


def with_delivery_count(message: Message, count: int) -> Message:
    """The message as a quorum queue delivers it after `count` returns (as it is, if its headers are
    malformed)."""
    fields = split_properties(message.properties_raw)
    try:
        headers = dict(tables.split_table(fields[HEADERS])) if HEADERS in fields else {}
    except tables.TableError:
        return message
    headers["x-delivery-count"] = tables.long(count)
    fields[HEADERS] = tables.table_field(tables.sorted_entries(list(headers.items())))
    properties = join_properties(fields)
    return Message(message.exchange, message.routing_key, properties, message.body, message.names_raw)


def queue_class(arguments: dict[str, Any]) -> type[Queue]:
    """The kind of queue declared with `arguments`: plain FIFO unless they ask for a lifecycle."""
    return Queue if QueueSettings.from_arguments(arguments).plain else LifecycleQueue


class LifecycleQueue(Queue):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._start()

    @classmethod
    def take_over(cls, queue: Queue) -> None:
        """Turn a plain queue into one of these, keeping its messages and consumers."""
        queue.__class__ = cls
        queue._start()  # type: ignore[attr-defined]

    def _start(self) -> None:
        assert self.host is not None, "a queue's lifecycle needs its vhost"
        settings = self.settings = QueueSettings.from_arguments(self.arguments)
        self._clock = self.host.clock
        self._deadlines = self.host.deadlines
        # Whether any message may expire: until then, deliveries need not read the clock.
        self._expiring = settings.message_ttl is not None
        self._expires_at: float | None = None  # when the queue goes if still unused
        entries = self._clear_head()  # a plain queue's deque
        priorities = settings.max_priority
        self.ready = FifoReady(self.pager) if priorities is None else PriorityReady(priorities, self.pager)
        now = self._clock()
        for entry in entries:
            self.ready.append(self._track(entry, now))
        if self.paged is not None:  # a paged plain queue: its chunks hold no deadlines, nor need any
            self.paged.tail = deque(self._track(entry, now) for entry in self.paged.tail)
        # Consumers by priority, highest first; round-robin within each.
        self._groups: list[tuple[int, deque[Consumer]]] = []
        for consumer in self.consumers:
            self._join_group(consumer)
        self.active = self.consumers[0] if settings.single_active_consumer and self.consumers else None
        self.touch()

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
        paged = self.paged
        if settings.limited and settings.overflow != "drop-head":
            if self._over_limit(self.message_count + 1, self._ready_bytes() + len(message.body)):
                if settings.overflow == REJECT_PUBLISH_DLX:
                    self._dead_letter([message], MAXLEN)
                return None
        now = self._clock()
        expires = deadline(message, settings.message_ttl, now)
        entry = TrackedEntry(message, next(self._seq), expires)
        # The journal gets the time left: a durable log keeps it across a restart.
        expires_in = None
        if expires is not None:
            self._expiring = True
            expires_in = expires - now
        at_head = not ready and paged is None
        if at_head and self.consumers and not self._consumers_full:
            consumer = self._next_consumer()
            if consumer is not None:
                position = self.journal.enqueued(entry, expires_in)
                self._hand_over(consumer, entry)
                return position
            self._consumers_full = True
        if at_head and expires is not None and expires <= now:
            # Expired on arrival (a TTL of 0 and no consumer ready for it): never stored.
            self._dead_letter([message], EXPIRED)
            return 0
        position = self.journal.enqueued(entry, expires_in)
        if paged is not None:
            paged.append(entry)
            self.pager.used += len(message.body) + OVERHEAD
        else:
            ready.append(entry)
            if len(ready) == 1:
                self._reschedule()
        if settings.limited and settings.overflow == "drop-head":
            self._drop_over_limit()
        if self.consumers and not self._consumers_full:
            self.deliver_ready()
        self._check_budget()
        return position

    def restore(
        self, entries: Iterable[Entry], next_seq: int, expires_in: list[float | None] | None = None
    ) -> None:
        # Nothing expires here: dead-lettering waits for the timers, once every queue and binding is back.
        now = self._clock()
        if expires_in is None:
            for entry in entries:
                self.ready.append(self._track(entry, now))
        else:
            for entry, left in zip(entries, expires_in, strict=True):
                self.ready.append(self._track_recovered(entry, now, left))
        self._seq = itertools.count(next_seq)
        self._reschedule()
        self._check_budget()

    def take(self) -> Entry | None:
        self.touch()
        ready = self.ready
        now = self._clock()
        self._expire_all(now)
        while not ready and self.paged is not None:
            self._load_head_now()
            self._expire_all(now)
        if not ready:
            return None
        entry = ready.popleft()
        self._leaving(entry, ack_required=True)
        if self.settings.counts_deliveries and entry.message is entry.published:
            # Quorum queues show the count on basic.get from the first one (unlike on deliveries).
            entry.message = with_delivery_count(entry.published, entry.deliveries)
        if self.paged is not None:
            self._refill()
        self._reschedule()
        return entry

    def reject(self, entries: list[Entry]) -> None:
        self.settle(entries)
        if not self.deleted:
            self._dead_letter([published(entry) for entry in entries], REJECTED)

    def requeue(self, entries: Iterable[Entry]) -> None:
        now = self._clock()
        returned = sorted((self._track(entry, now) for entry in entries), key=seq_of)
        for entry in returned:
            entry.redelivered = True
        self.unacked -= len(returned)
        if self.deleted or not returned:
            return
        self.returned_upto = max(self.returned_upto, returned[-1].seq)
        if self.settings.counts_deliveries:
            returned = self._count_returns(returned)
        self.ready.requeue(returned)
        if self.settings.limited and self.settings.overflow == "drop-head":
            self._drop_over_limit()
        self._expire_all(now)
        self.credit_changed()
        self._reschedule()
        self._check_budget()

    def delete(self) -> None:
        super().delete()
        self._deadlines.cancel(self)

    def touch(self) -> None:
        expires = self.settings.expires
        if expires is not None and not self.consumers:
            self._expires_at = self._clock() + expires / 1000
            self._reschedule()

    def on_deadline(self, now: float) -> None:
        """The node's timers call this at (or after) the deadline this queue asked for."""
        if self.deleted:
            return
        if self._expires_at is not None and self._expires_at <= now and not self.consumers:
            assert self.host is not None
            self.host.remove_queue(self)
            return
        if self._expiring and self._expire(now):
            self._deadlines.schedule(self, now)  # more to do after the loop has served others
        else:
            self._reschedule()

    # ---- consumers --------------------------------------------------------------------------

    def exclusive_use(self, exclusive: bool) -> bool:
        # A classic single-active-consumer queue refuses exclusive consumers outright.
        if exclusive and self.settings.single_active_consumer and queue_type(self.arguments) == "classic":
            return True
        return super().exclusive_use(exclusive)

    def add_consumer(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)
        self.had_consumers = True
        self._join_group(consumer)
        if self.settings.single_active_consumer and self.active is None:
            self.active = consumer
        self.credit_changed()

    def remove_consumer(self, consumer: Consumer) -> None:
        if consumer not in self.consumers:
            return
        self.consumers.remove(consumer)
        self._leave_group(consumer)
        if not self.consumers:
            self.touch()
        if consumer is self.active:
            # The next one in line: the highest priority, the earliest among equals.
            self.active = max(self.consumers, key=lambda c: c.priority, default=None)
            self.credit_changed()

    def deliver_ready(self) -> None:
        ready = self.ready
        expiring = self._expiring
        now = self._clock() if expiring else 0.0
        while ready:
            if expiring:
                expires = ready.peek().expires
                if expires is not None and expires <= now:
                    self._expire(now)
                    continue
            consumer = self._next_consumer()
            if consumer is None:
                self._consumers_full = True
                break
            self._hand_over(consumer, ready.popleft())
        if self.paged is not None:
            self._refill()
        self._reschedule()

    def _next_consumer(self) -> Consumer | None:
        if self.settings.single_active_consumer:
            active = self.active
            return active if active is not None and active.has_credit() else None
        for _, group in self._groups:
            for _ in range(len(group)):
                consumer = group[0]
                group.rotate(-1)
                if consumer.has_credit():
                    return consumer
        return None

    def _hand_over(self, consumer: Consumer, entry: Entry) -> None:
        self._leaving(entry, ack_required=not consumer.no_ack)
        consumer.deliver(entry)

    def _join_group(self, consumer: Consumer) -> None:
        for priority, group in self._groups:
            if priority == consumer.priority:
                group.append(consumer)
                return
        self._groups.append((consumer.priority, deque([consumer])))
        self._groups.sort(key=lambda item: -item[0])

    def _leave_group(self, consumer: Consumer) -> None:
        for index, (_, group) in enumerate(self._groups):
            if consumer in group:
                group.remove(consumer)
                if not group:
                    del self._groups[index]
                return

    # ---- paging (see paging.py) -------------------------------------------------------------

    def pageable(self) -> int:
        if not isinstance(self.ready, FifoReady):
            return 0  # a priority queue keeps its messages in memory
        return super().pageable()

    def _ready_bytes(self) -> int:
        """Body bytes of every ready message, paged out or not (x-max-length-bytes)."""
        paged = self.paged
        return self.ready.bytes if paged is None else self.ready.bytes + paged.body_bytes

    def _check_budget(self) -> None:
        pager = self.pager
        if pager.used > pager.threshold:
            pager.exceeded()

    def _clear_head(self) -> list[Entry]:
        if isinstance(self.ready, deque):  # still a plain queue's, while taking over
            return super()._clear_head()
        return self.ready.clear()

    def _take_back_of_head(self, want: int, keep: int) -> tuple[list[Entry], list[int]]:
        assert isinstance(self.ready, FifoReady)
        return self.ready.take_back(want, keep, self.returned_upto)  # type: ignore[return-value]

    def _new_chunk(self, entries: list[Entry], body_bytes: int) -> Chunk:
        expires = None
        if self._expiring:
            deadlines = (entry.expires for entry in entries)  # type: ignore[attr-defined]
            expires = array("d", (math.nan if when is None else when for when in deadlines))
        return self.pager.page_out(self, entries, body_bytes, expires)

    def _chunk_entries(self, chunk: Chunk) -> list[Entry]:
        entries = super()._chunk_entries(chunk)
        expires = chunk.expires
        if expires is None:
            return [TrackedEntry.adopt(entry, None) for entry in entries]
        tracked = []
        for entry, when in zip(entries, expires, strict=True):
            tracked.append(TrackedEntry.adopt(entry, None if math.isnan(when) else when))
            if not math.isnan(when):
                self._expiring = True
        return tracked

    def _add_to_head(self, entries: list[Entry]) -> None:
        for entry in entries:
            self.ready.append(entry)  # type: ignore[arg-type]
        self._check_budget()

    def _unpage(self) -> None:
        paged = self.paged
        assert paged is not None
        self.paged = None
        tail = list(paged.tail)
        # Counted already, and again by the head's append.
        self.pager.used -= sum(len(entry.message.body) + OVERHEAD for entry in tail)
        self._add_to_head(tail)

    def chunk_loaded(self, chunk: Chunk) -> None:
        super().chunk_loaded(chunk)
        # Messages that expired on disk go now, before the pager could take them out again.
        self._expire_all(self._clock())
        self._reschedule()

    # ---- removal ----------------------------------------------------------------------------

    def _over_limit(self, count: int, size: int) -> bool:
        settings = self.settings
        return (settings.max_length is not None and count > settings.max_length) or (
            settings.max_length_bytes is not None and size > settings.max_length_bytes
        )

    def _drop_over_limit(self) -> None:
        ready = self.ready
        dropped = []
        while self._over_limit(self.message_count, self._ready_bytes()):
            if not ready:
                if self.paged is None:
                    break
                self._load_head_now()  # blocking, once per chunk: the head is dropped faster than read
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
        if not self.ready and self.paged is not None:
            self._refill()  # the next deadline is in the first chunk: read it back
        return len(expired) == EXPIRY_BATCH

    def _expire_all(self, now: float) -> None:
        if self._expiring:
            while self._expire(now):
                pass

    def _count_returns(self, returned: list[TrackedEntry]) -> list[TrackedEntry]:
        """Quorum queues count each return; past x-delivery-limit a message goes for good."""
        limit = self.settings.delivery_limit
        kept, spent = [], []
        for entry in returned:
            entry.deliveries += 1
            if limit is not None and entry.deliveries > limit:
                spent.append(entry)
            else:
                entry.message = with_delivery_count(entry.published, entry.deliveries)
                kept.append(entry)
        if spent:
            self._discard(spent, DELIVERY_LIMIT)
        return kept

    def _discard(self, entries: list[TrackedEntry], reason: str) -> None:
        """Entries gone for good from the ready list: journal them settled, dead-letter them."""
        self.journal.settled(entries)
        self._dead_letter([entry.published for entry in entries], reason)

    def _dead_letter(self, messages: list[Message], reason: str) -> None:
        if self.settings.dead_letter_exchange is not None:
            assert self.host is not None
            dead_letter(self.host, self.settings, self.name, messages, reason)

    def _reschedule(self) -> None:
        when = None
        if self._expiring:
            paged = self.paged
            when = self.ready.next_expiry() if self.ready or paged is None else paged.chunks[0].first_expires
        expires_at = self._expires_at
        if expires_at is not None and not self.consumers and (when is None or expires_at < when):
            when = expires_at
        if when is not None:
            self._deadlines.schedule(self, when)
