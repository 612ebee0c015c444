"""Carrying out what a queue's commands produce (broker/queues/effects.py) in a vhost: deliveries to the
consumers' channels, dead-lettering through the vhost's exchanges, the node's timers, the removal of a
queue that expired unused, and paging through the node's pager (broker/pager.py).

Each queue gets its vhost's `Executor.run` as its executor. Still called by the queue directly: its
journal (the durable log) and the pager's budget count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from leveret.broker.queues.dead_letter import dead_letter
from leveret.broker.queues.effects import (
    ARM,
    DEAD_LETTER,
    DELIVER,
    DISARM,
    LOAD,
    PAGE_OUT,
    RELEASE,
    REMOVE,
    Effect,
)

if TYPE_CHECKING:
    from leveret.broker.queues.host import QueueHost
    from leveret.broker.queues.queue import Queue


class Executor:
    __slots__ = ("vhost",)

    def __init__(self, vhost: QueueHost) -> None:
        self.vhost = vhost

    def run(self, queue: Queue, effect: Effect) -> None:
        kind = effect[0]
        if kind == DELIVER:  # first: one per message
            consumer = effect[1]
            consumer.channel.deliver(consumer, effect[2])
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
        elif kind == REMOVE:
            self.vhost.remove_queue(queue)
        else:
            raise ValueError(f"unknown effect {effect!r}")

