"""A message's place in one queue: what every queue module shares, below all of them."""

from __future__ import annotations

from leveret.broker.message import Message


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
