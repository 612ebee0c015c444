"""A queue: ready messages in order, consumers served round-robin within their credit.

A state machine (see commands.py, effects.py, `apply`). The plain FIFO path is kept free of lifecycle work
because it carries most traffic: TTL, expiry, limits, dead-lettering, priorities, single active consumer
and delivery counting are the queue's lifecycle part (`lifecycle`, broker/queues/lifecycle.py), made when
the queue is declared with such arguments, or when it first needs one (a message with an `expiration`, a
consumer with a priority); the queue hands it the operations it changes (part.py).

A queue counts its own ready messages in memory (`memory`, a Footprint: one integer per message, read by
the pager, which keeps the node's memory budget), says so when the count passes the mark the pager set
(a FOOTPRINT effect), and pages out when the pager asks (paging.py, pageable.py).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from leveret.broker.message import Message
from leveret.broker.queues import commands
from leveret.broker.queues.arguments import queue_type
from leveret.broker.queues.dead_letter import REJECTED
from leveret.broker.queues.effects import DELIVER, FOOTPRINT, Effect
from leveret.broker.queues.entry import Entry
from leveret.broker.queues.journal import NULL_JOURNAL, PURGED, Journal, RecordingJournal
from leveret.broker.queues.pageable import Pageable
from leveret.broker.queues.paging import (
    HEAD_LOADING,
    NEVER,
    NO_PAGER,
    OVERHEAD,
    Footprint,
    HeadGetter,
    HeadLoading,
    PagedTail,
    Pager,
    footprint,
)
from leveret.broker.queues.ready import remove_seqs, requeue_into
from leveret.broker.queues.subscriber import DELIVERY_OVERHEAD

if TYPE_CHECKING:
    from leveret.broker.queues.host import QueueHost
    from leveret.broker.queues.part import LifecyclePart
    from leveret.broker.queues.subscriber import Subscriber


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
        # The arguments with its policies applied (broker/policies.py): what its lifecycle follows.
        self.effective_arguments = self.arguments
        self.policy: Any = None  # the policy and operator policy that apply (broker/policies.Policy)
        self.operator_policy: Any = None
        # message_stats (broker/stats.py): counted by the channels that deliver and ack; publishes are the
        # seqs handed out since `seq_base` (see `published`).
        self.seq_base = 1
        self.delivered = 0  # deliveries and basic.get-oks
        self.redelivered = 0
        self.acked = 0
        self.ready: deque[Entry] = deque()
        self.consumers: deque[Subscriber] = deque()
        # Consumers on other nodes this queue (their leader) said yes to, not registered yet, by an id of
        # theirs -> exclusive: they count for `exclusive_use` (broker/cluster/remote.py).
        self.promised: dict[tuple[str, int], bool] = {}
        # Delivered, not yet settled, by seq: the queue's own record of what its consumers hold.
        self.checked_out: dict[int, Entry] = {}
        # Unacked ones among them whose publish was nacked (see `discard`): settled, never requeued.
        self.nacked_out: set[int] = set()
        self.deleted = False
        # TTL, limits, priorities and the rest, once the queue needs them (see lifecycle.py).
        self.lifecycle: LifecyclePart | None = None
        self.journal = journal
        self._seq = itertools.count(1)
        # True once a scan found no consumer with credit; cleared when credit may have appeared.
        # Saves scanning every consumer on every publish while all of them are full.
        self._consumers_full = False
        self.had_consumers = False
        self.host = host  # None only for a queue outside any vhost (unit tests): no lifecycle then
        self.pager: Pager = host.pager if host is not None else NO_PAGER
        self.memory = Footprint(self.pager.first_mark())  # its ready messages in memory, for the pager
        self.paged: PagedTail | None = None  # the ready messages after the head, when some are paged out
        self.head_getters: list[HeadGetter] = []  # basic.gets waiting for the head's chunk (HEAD_LOADING)
        # The highest seq ever requeued: only entries above it are paged out (see paging.py).
        self.returned_upto = 0
        # What commands produced and the executor (the vhost's) has not carried out yet; see effects.py.
        self.effects: list[Effect] = []
        self.run_effect: Callable[[Queue, Effect], None] | None = host.execute if host is not None else None
        # The node's monotonic clock, which only the lifecycle reads (TTL, expiry); `apply` sets its `now`.
        self.clock: Callable[[], float] = host.clock if host is not None else _no_clock
        self._hold = host is None  # effects wait in `effects`: being carried out, or collected by apply
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
    def unacked(self) -> int:
        return len(self.checked_out)

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    @property
    def published(self) -> int:
        """Messages enqueued since the queue was made (or recovered): each took a seq. Read off the counter's
        repr ("count(n)"), so that the hot path counts nothing more."""
        return int(repr(self._seq)[6:-1]) - self.seq_base

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} in {self.vhost!r}>"

    # ---- messages ---------------------------------------------------------------------------

    def enqueue(self, message: Message) -> int | None:
        """Accept a published message. Returns the store position a confirm must wait for (0: none),
        or None when the queue refused it (the publisher's confirm is then a nack)."""
        if self.lifecycle is not None or message.expiration is not None:
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
                    self.checked_out[entry.seq] = entry
                    if entry.logged:
                        journal.delivered(entry)
                consumer.credit -= 1
                pool = consumer.pool
                if pool is not None:
                    pool.left -= 1
                consumer.output.left -= message.size + DELIVERY_OVERHEAD
                if self._hold:
                    self.effects.append((DELIVER, consumer, entry))
                else:
                    # The deliver effect carried out in place, as the executor's DELIVER does: the hot
                    # path's one effect, without a tuple and a dispatch (~0.1 µs a message).
                    consumer.channel.deliver(consumer, entry)
                return position
            self._consumers_full = True
            ready.append(entry)
        else:
            ready.append(entry)
        memory = self.memory
        memory.used += message.size + OVERHEAD
        if memory.used > memory.mark:
            self._passed_mark()
            self._flush()
        if ready and self.consumers and not self._consumers_full:
            self.deliver_ready()
        return position

    def restore(
        self,
        entries: Iterable[Entry],
        next_seq: int,
        expires_in: list[float | None] | None = None,
        returns: list[int] | None = None,
    ) -> None:
        """Recovered entries, in order, before any publish. New entries number from `next_seq`: above
        every seq the log ever held, settled ones included, so no number is used twice. `expires_in`:
        for each entry, the seconds its logged deadline leaves it (None: none logged), if any has one;
        `returns`: how often each came back (a quorum queue's delivery count), if any did."""
        entries = list(entries)
        self.seq_base = next_seq
        if (
            self.lifecycle is not None
            or expires_in is not None
            or any(entry.message.expiration is not None for entry in entries)
        ):
            self._with_lifecycle().restore(entries, next_seq, expires_in, returns)
            return
        self.ready.extend(entries)
        self._seq = itertools.count(next_seq)
        self._counted(entries)
        self._flush()

    def take(self, getter: HeadGetter | None = None) -> Entry | HeadLoading | None:
        """basic.get: the next ready message, now unacked (the caller settles or requeues it); None if
        there is none; HEAD_LOADING if it must first be read back from disk (see commands.TAKE)."""
        if self.lifecycle is not None:
            return self.lifecycle.take(getter)
        while not self.ready and self.paged is not None:
            if not self._fill_head(getter):
                self._flush()
                return HEAD_LOADING
        if not self.ready:
            return None
        entry = self.ready.popleft()
        self.memory.used -= entry.message.size + OVERHEAD
        self._leaving(entry, ack_required=True)
        if self.paged is not None:
            self._refill()
        self._flush()
        return entry

    def take_seqs(self, seqs: Iterable[int], *, log: bool = True) -> list[Entry]:
        """Ready messages (by seq; those in memory, not paged out) become unacked without a delivery: a
        cluster's new leader keeps what a consumer on another node still holds (broker/cluster/remote.py).
        `log`: record them as delivered (not when the log says so already)."""
        wanted = set(seqs)
        if not wanted:
            return []  # an empty claim: no scan of the ready list
        taken = self._remove_from_head(wanted)
        for entry in taken:
            self.checked_out[entry.seq] = entry
            if log and entry.logged:
                self.journal.delivered(entry)
        self._flush()
        return taken

    def settle(self, seqs: Iterable[int]) -> list[Entry]:
        """Unacked messages (by seq) are done with: acked, or rejected without requeue."""
        pop = self.checked_out.pop
        entries = [pop(seq) for seq in seqs]
        self.journal.settled(entries)
        if self.nacked_out:
            self.nacked_out.difference_update(entry.seq for entry in entries)
        return entries

    def reject(self, seqs: Iterable[int]) -> list[Entry]:
        """Unacked messages rejected without requeue (a dead-letter exchange may take them)."""
        pop = self.checked_out.pop
        entries = [pop(seq) for seq in seqs]
        lifecycle = self.lifecycle
        if lifecycle is None or lifecycle.outbox is None:  # else removed once dead-lettered everywhere
            self.journal.removed(entries, REJECTED)
        if self.nacked_out:
            self.nacked_out.difference_update(entry.seq for entry in entries)
        if lifecycle is not None:
            lifecycle.rejected(entries)
        return entries

    def dead_lettered(self, ids: list[int]) -> None:
        """Dead-lettered messages (at-least-once) that every target queue now holds: settled here."""
        if self.lifecycle is not None:
            self.lifecycle.dead_lettered(ids)

    def _returned(self, seqs: Iterable[int]) -> list[Entry]:
        """Unacked messages coming back, in seq order, marked redelivered (those whose publish was nacked
        do not come back: they are settled)."""
        pop = self.checked_out.pop
        returned = [pop(seq) for seq in sorted(seqs)]
        if self.nacked_out:
            nacked = self.nacked_out
            kept = []
            for entry in returned:
                if entry.seq in nacked:
                    nacked.remove(entry.seq)
                else:
                    kept.append(entry)
            returned = kept
        for entry in returned:
            entry.redelivered = True
        return returned

    def requeue(self, seqs: Iterable[int]) -> None:
        """Unacked messages come back to the head, in their original order, marked redelivered."""
        if self.lifecycle is not None:
            self.lifecycle.requeue(seqs)
            return
        returned = self._returned(seqs)
        if self.deleted or not returned:
            return
        self.journal.returned(returned)
        self.returned_upto = max(self.returned_upto, returned[-1].seq)
        requeue_into(self.ready, returned)
        self._counted(returned)
        self.credit_changed()
        self._flush()

    def discard(self, seqs: Iterable[int]) -> int:
        """Persistent publishes the store failed to write, and nacked: the store retries the write, so they
        would be stored after all, and redelivered to a publisher that retries them. Ready ones leave the
        queue; unacked ones stay with their consumer but never come back (delivered before the nack, they
        cannot be taken back). All of them are settled in the log behind the retried records, so recovery
        does not bring them back either. Ones paged out are dropped from their chunk (left out when it is
        read back). Returns how many ready ones left."""
        wanted = set(seqs)
        removed = self._remove_from_head(wanted)
        paged = self.paged
        dropped: list[int] = []
        if paged is not None:
            gone = remove_seqs(paged.tail, wanted)
            if gone:
                paged.count -= len(gone)
                paged.body_bytes -= sum(len(entry.message.body) for entry in gone)
                self.memory.used -= footprint(gone)
                removed += gone
            for chunk in paged.chunks:
                found = chunk.drop(wanted)
                if found:
                    paged.count -= len(found)
                    if chunk.entries is not None:  # still in memory: its bodies are known now
                        newly = set(found)
                        body_bytes = sum(len(e.message.body) for e in chunk.entries if e.seq in newly)
                        chunk.body_bytes -= body_bytes
                        paged.body_bytes -= body_bytes
                    dropped += found
        out = [self.checked_out[seq] for seq in wanted if seq in self.checked_out]
        self.nacked_out.update(entry.seq for entry in out)
        self.journal.settled(removed + out)
        if dropped:
            self.journal.settled_seqs(sorted(dropped))
        self._flush()
        return len(removed) + len(dropped)

    def _remove_from_head(self, seqs: set[int]) -> list[Entry]:
        if self.lifecycle is not None:
            return self.lifecycle.remove_from_head(seqs)
        gone = remove_seqs(self.ready, seqs)
        self.memory.used -= footprint(gone)
        return gone

    def purge(self) -> int:
        count = self.message_count
        purged = self._clear_head()
        if self.paged is not None:
            purged += self._drop_paged(removed=PURGED)
        self.journal.removed(purged, PURGED)
        self._flush()
        return count

    def delete(self) -> None:
        """The queue is gone: its ready messages with it (unacked ones are dropped when settled)."""
        self.deleted = True
        self._clear_head()
        if self.paged is not None:
            self._drop_paged(removed=None)
        self.journal.deleted()
        if self.lifecycle is not None:
            self.lifecycle.deleted()
        self._flush()

    def touch(self) -> None:
        """The queue was declared again (or passively): it counts as used."""
        if self.lifecycle is not None:
            self.lifecycle.touch()

    def tick(self) -> None:
        """The deadline the queue asked for came (a plain queue asks for none)."""
        if self.lifecycle is not None:
            self.lifecycle.tick()

    def on_deadline(self, now: float) -> None:
        """The node's timers call this at (or after) the deadline the queue asked for (ARM)."""
        if self.lifecycle is not None:
            self.lifecycle.on_deadline(now)

    # ---- consumers --------------------------------------------------------------------------

    def exclusive_use(self, exclusive: bool) -> bool:
        """Whether a new consumer (exclusive or not) is refused because of consumers already here. Only
        classic queues have exclusive consumers: RabbitMQ's quorum and stream queues take the flag and
        ignore it."""
        if queue_type(self.arguments) != "classic":
            return False
        if exclusive and self.lifecycle is not None and self.lifecycle.settings.single_active_consumer:
            return True  # a classic single-active-consumer queue refuses exclusive consumers outright
        if not self.consumers and not self.promised:
            return False
        return exclusive or any(c.exclusive for c in self.consumers) or any(self.promised.values())

    def credit(self, consumer: Subscriber, credit: int) -> None:
        """How many more messages `consumer` may take now (its channel's say: prefetch, flow, the
        connection's output; see Consumer.wanted_credit). Each delivery uses one."""
        consumer.credit = credit
        if credit > 0:
            self.credit_changed()

    def add_consumer(self, consumer: Subscriber) -> None:
        if consumer.priority or self.lifecycle is not None:
            self._with_lifecycle().add_consumer(consumer)
            return
        self.consumers.append(consumer)
        self.had_consumers = True
        self.credit_changed()

    def remove_consumer(self, consumer: Subscriber) -> None:
        if self.lifecycle is not None:
            self.lifecycle.remove_consumer(consumer)
            return
        try:
            self.consumers.remove(consumer)
        except ValueError:
            pass

    def credit_changed(self) -> None:
        """A consumer may be able to take more: try delivering again."""
        self._consumers_full = False
        if (self.ready or self.paged is not None) and self.consumers:
            self.deliver_ready()

    def _next_consumer(self) -> Subscriber | None:
        """The next consumer with credit, in turn (None: all are full)."""
        consumers = self.consumers
        for _ in range(len(consumers)):
            consumer = consumers[0]
            consumers.rotate(-1)
            if (
                consumer.credit > 0
                and consumer.output.left > 0
                and (consumer.pool is None or consumer.pool.left > 0)
            ):
                return consumer
        return None

    def deliver_ready(self) -> None:
        """Hand ready messages to consumers with credit, rotating so that each gets its turn."""
        if self.lifecycle is not None:
            self.lifecycle.deliver_ready()
            return
        ready = self.ready
        consumers = self.consumers
        effects = self.effects
        left = len(ready)
        freed = 0  # message sizes delivered: the footprint is updated once, after the loop
        full = False
        while ready:
            for _ in range(len(consumers)):
                consumer = consumers[0]
                consumers.rotate(-1)
                if (
                    consumer.credit > 0
                    and consumer.output.left > 0
                    and (consumer.pool is None or consumer.pool.left > 0)
                ):
                    break
            else:
                self._consumers_full = full = True
                break
            entry = ready.popleft()
            freed += entry.message.size
            # self._leaving(entry, not consumer.no_ack), inlined: a call costs ~0.1 µs per delivery.
            if consumer.no_ack:
                self.journal.settled([entry])
            else:
                self.checked_out[entry.seq] = entry
                if entry.logged and not entry.redelivered:
                    self.journal.delivered(entry)
            consumer.credit -= 1
            pool = consumer.pool
            if pool is not None:
                pool.left -= 1
            consumer.output.left -= entry.message.size + DELIVERY_OVERHEAD
            effects.append((DELIVER, consumer, entry))
        self.memory.used -= freed + OVERHEAD * (left - len(ready))
        if self.paged is not None:
            self._refill()
            if ready and not full:
                # The head ran dry and a chunk read back joined it just now: deliver on from it.
                self.deliver_ready()
                return
        self._flush()

    # ---- effects ----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Hand the effects produced so far to the executor, in order (unless it is carrying them out
        already, one of them having called back in, or `apply` is collecting them)."""
        effects = self.effects
        if self._hold or not effects:
            return
        self._hold = True
        run = self.run_effect
        assert run is not None
        try:
            i = 0
            while i < len(effects):  # an effect may call back in and add more
                run(self, effects[i])
                i += 1
        finally:
            effects.clear()
            self._hold = False

    def apply(self, command: commands.Command, now: float) -> tuple[Any, list[Effect]]:
        """Run `command` (commands.py) at time `now`: its reply, and its effects for the caller to carry
        out, none of them carried out here: not even the journal's records (JOURNAL effects)."""
        held, self._hold = self._hold, True
        clock, self.clock = self.clock, lambda: now
        journal = self.journal
        if journal is not NULL_JOURNAL:  # its records come out as JOURNAL effects
            self.journal = RecordingJournal(journal, self.effects)
        try:
            reply = getattr(self, _HANDLERS[command[0]])(*command[1:])
            effects, self.effects = self.effects, []
        finally:
            self._hold = held
            self.clock = clock
            self.journal = journal
        return reply, effects

    def _leaving(self, entry: Entry, *, ack_required: bool) -> None:
        """An entry leaves the ready list for a delivery: unacked until settled, or settled now (no-ack)."""
        if ack_required:
            self.checked_out[entry.seq] = entry
            if entry.logged and not entry.redelivered:
                self.journal.delivered(entry)
        else:
            self.journal.settled([entry])

    def _clear_head(self) -> list[Entry]:
        if self.lifecycle is not None:
            return self.lifecycle.clear_head()
        entries = list(self.ready)
        self.ready.clear()
        self.memory.used -= footprint(entries)
        return entries

    def _counted(self, entries: list[Entry]) -> None:
        """Entries came (back) into the in-memory ready list: count them in its footprint."""
        memory = self.memory
        memory.used += footprint(entries)
        if memory.used > memory.mark:
            self._passed_mark()

    def _passed_mark(self) -> None:
        """The footprint passed the pager's mark: tell it (a FOOTPRINT effect, carried out with the
        command's others), once, until it sets another."""
        self.memory.mark = NEVER
        self.effects.append(_FOOTPRINT)

    def _with_lifecycle(self) -> LifecyclePart:
        """The queue's lifecycle, made now if it has none yet (keeping every message and consumer)."""
        if self.lifecycle is None:
            assert self.host is not None, "a queue's lifecycle needs its vhost"
            self.host.add_lifecycle(self)
            assert self.lifecycle is not None
        return self.lifecycle


def _no_clock() -> float:
    return 0.0  # a queue outside any vhost (a test's) has no lifecycle to read it


_FOOTPRINT: Effect = (FOOTPRINT,)

# Queue's method for each command of commands.py (the same arguments, after the name).
_HANDLERS = {
    commands.ENQUEUE: "enqueue",
    commands.ATTACH: "add_consumer",
    commands.DETACH: "remove_consumer",
    commands.CREDIT: "credit",
    commands.SETTLE: "settle",
    commands.REJECT: "reject",
    commands.RETURN: "requeue",
    commands.TAKE: "take",
    commands.TICK: "tick",
    commands.PURGE: "purge",
    commands.DELETE: "delete",
    commands.DISCARD: "discard",
    commands.DEAD_LETTERED: "dead_lettered",
    commands.PAGE: "page_out",
    commands.LOADED: "chunk_loaded",
}
