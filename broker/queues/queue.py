"""A queue: ready messages in order, consumers served round-robin within their credit.

This is the plain FIFO queue, kept free of lifecycle work because it carries most traffic. A queue whose
arguments ask for TTL, expiry, limits, dead-lettering, priorities, single active consumer or delivery
counting is a LifecycleQueue (broker/queues/lifecycle.py) from the start; a plain one becomes one when it
first needs to: a message with an `expiration`, or a consumer with a priority.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from leveret.broker.message import Message
from leveret.broker.queues.journal import NULL_JOURNAL, Journal
from leveret.broker.queues.ready import requeue_into

if TYPE_CHECKING:
    from leveret.broker.queues.consumer import Consumer
    from leveret.broker.queues.host import QueueHost


class Entry:
    """One message's place in one queue (a fanout puts one Message in several queues).

    `logged` is True when the queue's journal holds it (a persistent message on a durable queue).
    """

    __slots__ = ("message", "seq", "redelivered", "logged")

    def __init__(self, message: Message, seq: int, redelivered: bool = False) -> None:
        self.message = message
        self.seq = seq
        self.redelivered = redelivered
        self.logged = False


class Queue:
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
        # x-consumer-timeout (RabbitMQ 3.12+): overrides the node's consumer_timeout for deliveries from here.
        timeout = self.arguments.get("x-consumer-timeout")
        self.consumer_timeout: int | None = timeout if type(timeout) is int and timeout >= 0 else None

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        return len(self.ready)

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
        position = self.journal.enqueued(entry)
        self.ready.append(entry)
        if self.consumers and not self._consumers_full:
            self.deliver_ready()
        return position

    def restore(self, entries: Iterable[Entry], next_seq: int) -> None:
        """Recovered entries, in order, before any publish. New entries number from `next_seq`: above
        every seq the log ever held, settled ones included, so no number is used twice."""
        entries = list(entries)
        if any(entry.message.expiration is not None for entry in entries):
            self._with_lifecycle().restore(entries, next_seq)
            return
        for entry in entries:
            self.ready.append(entry)
        self._seq = itertools.count(next_seq)

    def take(self) -> Entry | None:
        """basic.get: the next ready message, now unacked (the caller settles or requeues it)."""
        if not self.ready:
            return None
        entry = self.ready.popleft()
        self._leaving(entry, ack_required=True)
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
        if self.deleted:
            return
        requeue_into(self.ready, returned)
        self.credit_changed()

    def purge(self) -> int:
        purged = list(self.ready)
        self.ready.clear()
        self.journal.settled(purged)
        return len(purged)

    def delete(self) -> None:
        """The queue is gone: its ready messages with it (unacked ones are dropped when settled)."""
        self.deleted = True
        self.ready.clear()
        self.journal.deleted()

    def touch(self) -> None:
        """The queue was declared again (or passively): it counts as used."""

    # ---- consumers --------------------------------------------------------------------------

    def exclusive_use(self, exclusive: bool) -> bool:
        """Whether a new consumer (exclusive or not) is refused because of consumers already here."""
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
        if self.ready and self.consumers:
            self.deliver_ready()

    def deliver_ready(self) -> None:
        """Hand ready messages to consumers with credit, rotating so that each gets its turn."""
        ready = self.ready
        consumers = self.consumers
        while ready:
            for _ in range(len(consumers)):
                consumer = consumers[0]
                consumers.rotate(-1)
                if consumer.has_credit():
                    break
            else:
                self._consumers_full = True
                return
            entry = ready.popleft()
            # self._leaving(entry, not consumer.no_ack), inlined: a call costs ~0.1 µs per delivery.
            if consumer.no_ack:
                self.journal.settled([entry])
            else:
                self.unacked += 1
                if entry.logged and not entry.redelivered:
                    self.journal.delivered(entry)
            consumer.deliver(entry)

    def _leaving(self, entry: Entry, *, ack_required: bool) -> None:
        """An entry leaves the ready list for a delivery: unacked until settled, or settled now (no-ack)."""
        if ack_required:
            self.unacked += 1
            if entry.logged and not entry.redelivered:
                self.journal.delivered(entry)
        else:
            self.journal.settled([entry])

    def _with_lifecycle(self) -> Queue:
        """Become a LifecycleQueue, keeping every message and consumer."""
        # Imported here: lifecycle builds on this module.
        from leveret.broker.queues.lifecycle import LifecycleQueue

        LifecycleQueue.take_over(self)
        return self
