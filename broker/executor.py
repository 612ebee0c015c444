"""Carrying out what a queue's commands produce (broker/queues/effects.py) in a vhost: deliveries to the
consumers' channels, dead-lettering through the vhost's exchanges, the node's timers, the removal of a
queue that expired unused, and paging through the node's pager (broker/pager.py).

Each queue gets its vhost's `Executor.run` as its executor. The durable log's records are effects
(JOURNAL) under `Queue.apply`; outside it the queue calls its journal in place. The memory budget is the
pager's: a queue counts only its own footprint (queues/paging.py's Footprint) and reports passing the mark
the pager gave it (FOOTPRINT).

At-least-once dead-letters (FORWARD) are reported back to their queue (the DEAD_LETTERED command) once
their copies are in every target, and durable there: at once when no target logged them, else when a
group commit makes the store positions they wait for durable (`commit_completed`; in a cluster, the
gate's tickets, and for a target led by another node its leader's confirm, a remote `Ticket`). Which
targets already took a copy is kept here per held message, so that a retry goes only to those still
missing it (a copy that failed or was nacked counts as missing).
"""

from __future__ import annotations

import logging
from collections.abc import Container
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from leveret.broker.queues.dead_letter import dead_letter, forward
from leveret.broker.queues.effects import (
    ARM,
    DEAD_LETTER,
    DELIVER,
    DISARM,
    FOOTPRINT,
    FORWARD,
    HEAD_READY,
    JOURNAL,
    LOAD,
    PAGE_OUT,
    RELEASE,
    REMOVE,
    Effect,
)

if TYPE_CHECKING:
    from leveret.broker.message import Message
    from leveret.broker.queues.host import QueueHost
    from leveret.broker.queues.queue import Queue

log = logging.getLogger(__name__)


class Executor:
    __slots__ = ("vhost", "_progress", "_awaiting", "_durable", "_stuck")

    def __init__(self, vhost: QueueHost) -> None:
        self.vhost = vhost
        # Per source queue, per held dead-letter (its outbox id): the target queues that took a copy, and
        # the store position each copy waits for (0: none). Node-local, as RabbitMQ's dead-letter worker:
        # after a restart a held message is forwarded to every target again.
        self._progress: WeakKeyDictionary[Queue, dict[int, dict[str, int]]] = WeakKeyDictionary()
        # Held dead-letters that every target took, waiting for their copies' commits.
        self._awaiting: WeakKeyDictionary[Queue, set[int]] = WeakKeyDictionary()
        self._durable = 0  # the store position durable at the last commit
        # Queues whose dead-letters found nowhere to go, logged once until one goes again (as RabbitMQ).
        self._stuck: set[str] = set()

    def run(self, queue: Queue, effect: Effect) -> Any:
        """Carry out `effect`; a JOURNAL effect returns what the journal did (an enqueue's position)."""
        kind = effect[0]
        if kind == DELIVER:  # first: one per message
            consumer = effect[1]
            consumer.channel.deliver(consumer, effect[2])
        elif kind == JOURNAL:
            return getattr(queue.journal, effect[1])(*effect[2:])
        elif kind == ARM:
            self.vhost.deadlines.schedule(queue, effect[1])
        elif kind == DEAD_LETTER:
            assert queue.lifecycle is not None  # only a queue with a lifecycle dead-letters
            dead_letter(self.vhost, queue.lifecycle.settings, queue.name, effect[1], effect[2])
        elif kind == DISARM:
            self.vhost.deadlines.cancel(queue)
        elif kind == PAGE_OUT:
            queue.pager.write_out(effect[1])
        elif kind == LOAD:
            queue.pager.load(queue, effect[1])
        elif kind == RELEASE:
            queue.pager.release(effect[1])
        elif kind == FOOTPRINT:
            queue.pager.passed_mark(queue)
        elif kind == HEAD_READY:
            effect[1].head_ready(queue)
        elif kind == REMOVE:
            self.vhost.remove_queue(queue)
        elif kind == FORWARD:
            self._forward(queue, effect[1])
        else:
            raise ValueError(f"unknown effect {effect!r}")

    def _forward(self, queue: Queue, held: list[tuple[int, Message, str]]) -> None:
        assert queue.lifecycle is not None  # only a queue with a lifecycle dead-letters
        settings = queue.lifecycle.settings
        progress = self._progress.setdefault(queue, {})
        awaiting = self._awaiting.setdefault(queue, set())
        done: list[int] = []
        went = False  # some target took a copy
        for dlx_id, message, reason in held:
            if dlx_id in awaiting:
                continue  # every target has it: its commit is under way
            taken = progress.setdefault(dlx_id, {})
            before = len(taken)
            everywhere = forward(self.vhost, settings, queue.name, message, reason, taken)
            went = went or len(taken) > before
            if not everywhere:
                continue  # no route, or refused: the queue forwards it again later, to those missing it
            settled = _copies_settled(taken, self._durable, None)
            if settled:
                done.append(dlx_id)
                del progress[dlx_id]
            elif settled is None:
                awaiting.add(dlx_id)
        if done or went:
            self._stuck.discard(queue.name)
        elif held and not awaiting and queue.name not in self._stuck:
            self._stuck.add(queue.name)
            log.warning(
                "cannot forward dead-lettered messages from quorum queue '%s' in vhost '%s': dead-letter "
                "exchange '%s' is missing, routes to no queue, or a target refused them; they stay in the "
                "queue and are retried. This is not logged again until one is forwarded.",
                queue.name, self.vhost.name, settings.dead_letter_exchange,
            )
        if done:
            queue.dead_lettered(done)

    def commit_completed(self, durable: int, failed: Container[int] | None) -> None:
        """A group commit finished: forwarded dead-letters now durable in every target are done. A copy
        the commit failed to write was discarded by its target (a nacked publish, see Queue.discard): its
        message is forwarded again, by its queue's retry, to that target alone."""
        self._durable = durable
        for queue, ids in list(self._awaiting.items()):
            progress = self._progress.get(queue, {})
            done = []
            for dlx_id in list(ids):
                taken = progress.get(dlx_id)
                if taken is None:
                    ids.discard(dlx_id)
                    continue
                settled = _copies_settled(taken, durable, failed)
                if settled is False:
                    ids.discard(dlx_id)
                elif settled:
                    done.append(dlx_id)
                    ids.discard(dlx_id)
                    del progress[dlx_id]
            if done:
                queue.dead_lettered(done)


def _copies_settled(taken: dict[str, int], durable: int, failed: Container[int] | None) -> bool | None:
    """Whether every copy in `taken` is durable in its target (True), still on its way (None), or some
    failed (False: those leave `taken`, for the queue's retry to send again). A copy waits for a store
    position or gate ticket (durable once `durable` reaches it), or, in a queue led by another node, for
    that leader's confirm (a remote `Ticket`: a nack or a lost link fails it)."""
    lost = []
    waiting = False
    for name, position in taken.items():
        # A remote Ticket (broker/cluster/remote.py; not imported: the cluster's modules import this one).
        answered = getattr(position, "outcome", None)
        if answered is not None:
            outcome = answered(durable)
            if outcome is None:
                waiting = True
            elif not outcome:
                lost.append(name)
        elif failed is not None and position in failed:
            lost.append(name)
        elif position > durable:
            waiting = True
    for name in lost:
        del taken[name]
    if lost:
        return False
    return None if waiting else True
