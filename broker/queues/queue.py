"""A queue: ready messages in order, consumers served round-robin within their credit.

This is the plain FIFO queue, kept free of lifecycle work because it carries most traffic. A queue whose
arguments ask for TTL, expiry, limits, dead-lettering, priorities, single active consumer or delivery
counting is a LifecycleQueue (broker/queues/lifecycle.py) from the start; a plain one becomes one when it
first needs to: a message with an `expiration`, or a consumer with a priority.

Both kinds count their ready messages against the node's memory budget and page out when the pager asks
(paging.py, pageable.py); a queue with nothing paged out pays a counter update per message for that.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from leveret.broker.message import Message
from leveret.broker.queues.arguments import queue_type
from leveret.broker.queues.journal import NULL_JOURNAL, Journal
from leveret.broker.queues.pageable import Pageable
from leveret.broker.queues.paging import NO_PAGER, OVERHEAD, PagedTail, Pager
from leveret.broker.queues.ready import requeue_into

if TYPE_CHECKING:
    from leveret.broker.queues.consumer import Consumer
    from leveret.broker.queues.host import QueueHost


class Entry:
    """One message's place in one queue (a fanout puts one Message in several queues).

    `logged` is where the queue's journal holds it (a persistent message on a durable queue): an opaque
    nonzero int from the journal (the store's location of its record), 0 when the journal does not.
    """

    __slots__ = ("message", "seq", "redelivered", "logged")

    def __init__(self, message: Message, seq: int, redelivered: bool = False) -> None:
        self.message = message
        self.seq = seq
        self.redelivered = redelivered
        self.logged = 0


class Queue(Pageable):
    def __init__(
        self,
        name: str,
        vhost: str,
        *,
        durable: bool = False,
        exclusive_owner: object | None = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        journal: Journal = NULL_JOURNAL,
        host: QueueHost | None = None,
    ) -> None:
        self.name = name
        self.vhost = vhost
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = dict(arguments or {})
        self.ready: deque[Entry] = deque()
        self.consumers: deque[Consumer] = deque()
        self.unacked = 0
        self.deleted = False
        self.journal = journal
        self._seq = itertools.count(1)
        # True once a scan found no consumer with credit; cleared when credit may have appeared.
        # Saves scanning every consumer on every publish while all of them are full.
        self._consumers_full = False
        self.had_consumers = False
        self.host = host  # None only for a queue outside any vhost (unit tests): no lifecycle then
        self.pager: Pager = host.pager if host is not None else NO_PAGER
        self.paged: PagedTail | None = None  # the ready messages after the head, when some are paged out
        # The highest seq ever requeued: only entries above it are paged out (see paging.py).
        self.returned_upto = 0
        # x-consumer-timeout (RabbitMQ 3.12+): overrides the node's consumer_timeout for deliveries from here.
        timeout = self.arguments.get("x-consumer-timeout")
        self.consumer_timeout: int | None = timeout if type(timeout) is int and timeout >= 0 else None

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        paged = self.paged
        return len(self.ready) if paged is None else len(self.ready) + paged.count

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} in {self.vhost!r}>"

    # ---- messages ---------------------------------------------------------------------------

    def enqueue(self, message: Message) -> int | None:
        """Accept a published message. Returns the store position a confirm must wait for (0: none),
        or None when the queue refused it (the publisher's confirm is then a nack)."""
        if message.expiration is not None:
            return self._with_lifecycle().enqueue(message)
        entry = Entry(message, next(self._seq))
        journal = self.journal
        position = 0 if journal is NULL_JOURNAL else journal.enqueued(entry)
        ready = self.ready
        if self.paged is not None:
            self.paged.append(entry)
        elif not ready and self.consumers and not self._consumers_full:
            consumer = self._next_consumer()
            if consumer is not None:
                # Straight to the consumer: the message never waits in the ready list (nor in the budget).
                if consumer.no_ack:
                    journal.settled([entry])
                else:
                    self.unacked += 1
                    if entry.logged:
                        journal.delivered(entry)
                consumer.channel.deliver(consumer, entry)  # consumer.deliver(entry), one call less
                return position
            self._consumers_full = True
            ready.append(entry)
        else:
            ready.append(entry)
        pager = self.pager
        pager.used += len(message.body) + OVERHEAD
        if pager.used > pager.threshold:
            pager.exceeded()
        if ready and self.consumers and not self._consumers_full:
            self.deliver_ready()
        return position

    def restore(
        self, entries: Iterable[Entry], next_seq: int, expires_in: list[float | None] | None = None
    ) -> None:
        """Recovered entries, in order, before any publish. New entries number from `next_seq`: above
        every seq the log ever held, settled ones included, so no number is used twice. `expires_in`:
        for each entry, the seconds its logged deadline leaves it (None: none logged), if any has one."""
        entries = list(entries)
        if expires_in is not None or any(entry.message.expiration is not None for entry in entries):
            self._with_lifecycle().restore(entries, next_seq, expires_in)
            return
        self.ready.extend(entries)
        self._seq = itertools.count(next_seq)
        self._counted(entries)

    def take(self) -> Entry | None:
        """basic.get: the next ready message, now unacked (the caller settles or requeues it)."""
        while not self.ready and self.paged is not None:
            self._load_head_now()
        if not self.ready:
            return None
        entry = self.ready.popleft()
        self.pager.used -= len(entry.message.body) + OVERHEAD
        self._leaving(entry, ack_required=True)
        if self.paged is not None:
            self._refill()
        return entry

    def settle(self, entries: list[Entry]) -> None:
        """Unacked messages are done with (acked, or rejected without requeue)."""
        self.unacked -= len(entries)
        self.journal.settled(entries)

    def reject(self, entries: list[Entry]) -> None:
        """Unacked messages rejected without requeue (a dead-letter exchange may take them)."""
        self.settle(entries)

    def requeue(self, entries: Iterable[Entry]) -> None:
        """Unacked messages come back to the head, in their original order, marked redelivered."""
        returned = sorted(entries, key=lambda e: e.seq)
        for entry in returned:
            entry.redelivered = True
        self.unacked -= len(returned)
        if self.deleted or not returned:
            return
        self.returned_upto = max(self.returned_upto, returned[-1].seq)
        requeue_into(self.ready, returned)
        self._counted(returned)
        self.credit_changed()

    def purge(self) -> int:
        count = self.message_count
        purged = self._clear_head()
        if self.paged is not None:
            purged += self._drop_paged(settle=True)
        self.journal.settled(purged)
        return count

    def delete(self) -> None:
        """The queue is gone: its ready messages with it (unacked ones are dropped when settled)."""
        self.deleted = True
        self._clear_head()
        if self.paged is not None:
            self._drop_paged(settle=False)
        self.journal.deleted()

    def touch(self) -> None:
        """The queue was declared again (or passively): it counts as used."""

    # ---- consumers --------------------------------------------------------------------------

    def exclusive_use(self, exclusive: bool) -> bool:
        """Whether a new consumer (exclusive or not) is refused because of consumers already here. Only
        classic queues have exclusive consumers: RabbitMQ's quorum and stream queues take the flag and
        ignore it."""
        if queue_type(self.arguments) != "classic":
            return False
        return bool(self.consumers) and (exclusive or any(c.exclusive for c in self.consumers))

    def add_consumer(self, consumer: Consumer) -> None:
        if consumer.priority:
            self._with_lifecycle().add_consumer(consumer)
            return
        self.consumers.append(consumer)
        self.had_consumers = True
        self.credit_changed()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            pass

    def credit_changed(self) -> None:
        """A consumer may be able to take more: try delivering again."""
        self._consumers_full = False
        if (self.ready or self.paged is not None) and self.consumers:
            self.deliver_ready()

    def _next_consumer(self) -> Consumer | None:
        """The next consumer with credit, in turn (None: all are full)."""
        consumers = self.consumers
        for _ in range(len(consumers)):
            consumer = consumers[0]
            consumers.rotate(-1)
            if consumer.has_credit():
                return consumer
        return None

    def deliver_ready(self) -> None:
        """Hand ready messages to consumers with credit, rotating so that each gets its turn."""
        ready = self.ready
        consumers = self.consumers
        left = len(ready)
        freed = 0  # body bytes delivered: the budget is updated once, after the loop
        while ready:
            for _ in range(len(consumers)):
                consumer = consumers[0]
                consumers.rotate(-1)
                if consumer.has_credit():
                    break
            else:
                self._consumers_full = True
                break
            entry = ready.popleft()
            freed += len(entry.message.body)
            # self._leaving(entry, not consumer.no_ack), inlined: a call costs ~0.1 µs per delivery.
            if consumer.no_ack:
                self.journal.settled([entry])
            else:
                self.unacked += 1
                if entry.logged and not entry.redelivered:
                    self.journal.delivered(entry)
            consumer.channel.deliver(consumer, entry)
        self.pager.used -= freed + OVERHEAD * (left - len(ready))
        if self.paged is not None:
            self._refill()

    def _leaving(self, entry: Entry, *, ack_required: bool) -> None:
        """An entry leaves the ready list for a delivery: unacked until settled, or settled now (no-ack)."""
        if ack_required:
            self.unacked += 1
            if entry.logged and not entry.redelivered:
                self.journal.delivered(entry)
        else:
            self.journal.settled([entry])

    def _clear_head(self) -> list[Entry]:
        entries = list(self.ready)
        self.ready.clear()
        self.pager.used -= sum(len(entry.message.body) + OVERHEAD for entry in entries)
        return entries

    def _counted(self, entries: list[Entry]) -> None:
        """Entries came (back) into the in-memory ready list: count them against the budget."""
        pager = self.pager
        pager.used += sum(len(entry.message.body) + OVERHEAD for entry in entries)
        if pager.used > pager.threshold:
            pager.exceeded()

    def _with_lifecycle(self) -> Queue:
        """Become a LifecycleQueue, keeping every message and consumer."""
        # Imported here: lifecycle builds on this module.
        from leveret.broker.queues.lifecycle import LifecycleQueue

        LifecycleQueue.take_over(self)
        return self
