"""A queue: ready messages in order, consumers served round-robin within their credit."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from leveret.broker.message import Message

if TYPE_CHECKING:
    from leveret.broker.queues.consumer import Consumer


class Entry:
    """One message's place in one queue (a fanout puts one Message in several queues)."""

    __slots__ = ("message", "seq", "redelivered")

    def __init__(self, message: Message, seq: int, redelivered: bool = False) -> None:
        self.message = message
        self.seq = seq
        self.redelivered = redelivered


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

    def enqueue(self, message: Message) -> None:
        self.ready.append(Entry(message, next(self._seq)))
        if self.consumers and not self._consumers_full:
            self.deliver_ready()

    def take(self) -> Entry | None:
        """basic.get: the next ready message, now unacked (the caller settles or requeues it)."""
        if not self.ready:
            return None
        entry = self.ready.popleft()
        self.unacked += 1
        return entry

    def settle(self, entry: Entry) -> None:
        """An unacked message is done with: acked, or rejected without requeue."""
        self.unacked -= 1

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
        count = len(self.ready)
        self.ready.clear()
        return count

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
            if not consumer.no_ack:
                self.unacked += 1
            consumer.deliver(entry)
