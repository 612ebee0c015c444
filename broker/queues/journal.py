"""What a queue tells its durable log. A transient queue's journal records nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from leveret.broker.queues.effects import JOURNAL, Effect

if TYPE_CHECKING:
    from leveret.broker.queues.entry import Entry

# Why a queue removed messages it never dead-letters: a purge (queue.purge, or the management API's).
PURGED = "purged"


class Journal:
    """The queue's record of its persistent messages; the store-backed one is in broker/persistence.py.

    `enqueued` returns the store write position the entry becomes durable at, 0 when nothing was
    written (a transient queue or message): a publisher confirm waits for that position. None: the
    journal refused it (a cluster's replicated queue on a node that does not lead it): a nack.
    """

    def enqueued(self, entry: Entry, expires_in: float | None = None) -> int | None:
        """`expires_in`: seconds from now until the entry expires (its TTL), None if it never does."""
        return 0

    def logs(self, entry: Entry) -> bool:
        """Whether `enqueued` would log the entry (and so set its `logged`)."""
        return False

    def read_enqueues(self, locations: Sequence[int]) -> list[tuple[int, str, str, bytes, bytes] | None]:
        """Blocking (the pager's worker thread): the messages logged at `locations` (their `logged`), as
        (seq, exchange, routing key, raw properties, body); None for one that cannot be read."""
        return [None] * len(locations)

    def delivered(self, entry: Entry) -> None:
        """First delivery of the entry: after a crash it comes back with redelivered=true."""

    def settled(self, entries: Sequence[Entry]) -> None:
        """Entries gone for good: acked, dropped, expired or dead-lettered."""

    def returned(self, entries: Sequence[Entry]) -> None:
        """Entries back in the queue: redelivered from now on, one more return in their delivery count."""

    def removed(self, entries: Sequence[Entry], reason: str) -> None:
        """Entries the queue removed for `reason` (expired, maxlen, delivery_limit, rejected, purged): gone
        for good, as if settled."""

    def dead_lettering(self, entries: Sequence[Entry], reason: str) -> None:
        """Entries dead-lettered at least once for `reason`: held, not ready, until every target has them
        (then `removed`); after a restart they come back held."""

    def removed_range(self, first: int, last: int, reason: str) -> None:
        """Every entry it holds with a seq from `first` to `last` was removed for `reason` (a purged chunk
        of paged-out messages, which holds every seq in its range)."""

    def removed_seqs(self, seqs: Sequence[int], reason: str) -> None:
        """Every entry it holds with one of these seqs was removed for `reason` (a purged chunk that does
        not hold every seq in its range: a priority level's)."""

    def settled_seqs(self, seqs: Sequence[int]) -> None:
        """Every entry it holds with one of these seqs is gone (a purged chunk that does not hold every
        seq in its range: a priority level's)."""

    def deleted(self) -> None:
        """The queue was deleted: its log goes too."""


NULL_JOURNAL = Journal()


# An entry's `logged` while its enqueued record waits among a command's effects (RecordingJournal).
PENDING = -1


class RecordingJournal(Journal):
    """A queue's journal while `Queue.apply` runs a command: each call becomes a JOURNAL effect carrying
    the record, in order among the command's other effects, for the executor to write (`Executor.run`
    calls the real journal). Anything else asked of it (a store log's directory, to read a paged-out
    chunk back) is the real journal's."""

    def __init__(self, journal: Journal, effects: list[Effect]) -> None:
        self.journal = journal
        self._effects = effects

    def __getattr__(self, name: str) -> Any:
        return getattr(self.journal, name)

    def enqueued(self, entry: Entry, expires_in: float | None = None) -> int | None:
        self._effects.append((JOURNAL, "enqueued", entry, expires_in))
        if self.journal.logs(entry):
            # Logged once the effect is carried out; the command goes on as if it were (a message handed
            # straight to a consumer gets its delivered record), and the real journal sets where.
            entry.logged = PENDING
        return 0

    def delivered(self, entry: Entry) -> None:
        self._effects.append((JOURNAL, "delivered", entry))

    def settled(self, entries: Sequence[Entry]) -> None:
        self._effects.append((JOURNAL, "settled", list(entries)))

    def returned(self, entries: Sequence[Entry]) -> None:
        self._effects.append((JOURNAL, "returned", list(entries)))

    def removed(self, entries: Sequence[Entry], reason: str) -> None:
        self._effects.append((JOURNAL, "removed", list(entries), reason))

    def removed_range(self, first: int, last: int, reason: str) -> None:
        self._effects.append((JOURNAL, "removed_range", first, last, reason))

    def removed_seqs(self, seqs: Sequence[int], reason: str) -> None:
        self._effects.append((JOURNAL, "removed_seqs", list(seqs), reason))

    def settled_seqs(self, seqs: Sequence[int]) -> None:
        self._effects.append((JOURNAL, "settled_seqs", list(seqs)))

    def dead_lettering(self, entries: Sequence[Entry], reason: str) -> None:
        self._effects.append((JOURNAL, "dead_lettering", list(entries), reason))

    def deleted(self) -> None:
        self._effects.append((JOURNAL, "deleted"))
