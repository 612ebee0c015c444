"""A queue: ready messages in order, consumers served round-robin within their credit."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from leveret.broker.message import Message
from leveret.broker.queues.journal import NULL_JOURNAL, Journal

if TYPE_CHECKING:
    from leveret.broker.queues.consumer import Consumer


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
        entry = Entry(message, next(self._seq))
        position = self.journal.enqueued(entry)
        self.ready.append(entry)
        if self.consumers and not self._consumers_full:
            self.deliver_ready()
        return position

    def restore(self, entries: Iterable[Entry]) -> None:
        """Recovered entries, in order, before any publish: the sequence continues after them."""
        for entry in entries:
            self.ready.append(entry)
        if self.ready:
            self._seq = itertools.count(self.ready[-1].seq + 1)

    def take(self) -> Entry | None:
        """basic.get: the next ready message, now unacked (the caller settles or requeues it)."""
        if not self.ready:
            return None
        entry = self.ready.popleft()
        self.unacked += 1
        if entry.logged and not entry.redelivered:
            self.journal.delivered(entry)
        return entry

    def settle(self, entries: list[Entry]) -> None:
        """Unacked messages are done with: acked, or rejected without requeue."""
        self.unacked -= len(entries)
        self.journal.settled(entries)

    def requeue(self, entries: Iterable[Entry]) -> None:
        """Unacked messages come back to the head, in their original order, marked redelivered."""
        returned = sorted(entries, key=lambda e: e.seq)
        for entry in returned:
            entry.redelivered = True
        self.unacked -= len(returned)
        if self.deleted:
            return
        # Merge with ready messages so that the queue stays in publish order.
        if self.ready and returned and self.ready[0].seq < returned[-1].seq:
            merged = sorted(itertools.chain(returned, self.ready), key=lambda e: e.seq)
            self.ready = deque(merged)
        else:
            self.ready.extendleft(reversed(returned))
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

    # ---- consumers --------------------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
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
            if consumer.no_ack:
                self.journal.settled([entry])
            else:
                self.unacked += 1
                if entry.logged and not entry.redelivered:
                    self.journal.delivered(entry)
            consumer.deliver(entry)
