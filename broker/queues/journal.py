"""What a queue tells its durable log. A transient queue's journal records nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leveret.broker.queues.entry import Entry


class Journal:
    """The queue's record of its persistent messages; the store-backed one is in broker/persistence.py.

    `enqueued` returns the store write position the entry becomes durable at, 0 when nothing was
    written (a transient queue or message): a publisher confirm waits for that position.
    """

    def enqueued(self, entry: Entry, expires_in: float | None = None) -> int:
        """`expires_in`: seconds from now until the entry expires (its TTL), None if it never does."""
        return 0

    def delivered(self, entry: Entry) -> None:
        """First delivery of the entry: after a crash it comes back with redelivered=true."""

    def settled(self, entries: Sequence[Entry]) -> None:
        """Entries gone for good: acked, dropped, expired or dead-lettered."""

    def returned(self, entries: Sequence[Entry]) -> None:
        """Entries back in the queue: redelivered from now on, one more return in their delivery count."""

    def removed(self, entries: Sequence[Entry], reason: str) -> None:
        """Entries the queue removed for `reason` (expired, maxlen, delivery_limit, rejected): gone for
        good, as if settled."""

    def dead_lettering(self, entries: Sequence[Entry], reason: str) -> None:
        """Entries dead-lettered at least once for `reason`: held, not ready, until every target has them
        (then `removed`); after a restart they come back held."""

    def settled_range(self, first: int, last: int) -> None:
        """Every entry it holds with a seq from `first` to `last` is gone (a purged chunk of paged-out
        messages, which holds every seq in its range)."""

    def settled_seqs(self, seqs: Sequence[int]) -> None:
        """Every entry it holds with one of these seqs is gone (a purged chunk that does not hold every
        seq in its range: a priority level's)."""

    def deleted(self) -> None:
        """The queue was deleted: its log goes too."""


NULL_JOURNAL = Journal()
