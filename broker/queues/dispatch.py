"""Which consumer a queue with a lifecycle hands its next message to: by consumer priority (higher first,
round-robin among equals), or to its single active consumer (x-single-active-consumer). Parts of the
queue's lifecycle (lifecycle.py); a plain queue rotates through its consumers itself (queue.py)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leveret.broker.queues.subscriber import Subscriber


def has_credit(consumer: Subscriber) -> bool:
    return (
        consumer.credit > 0 and consumer.output.left > 0 and (consumer.pool is None or consumer.pool.left > 0)
    )


class ByPriority:
    """Consumers by priority, highest first; round-robin within each."""

    def __init__(self) -> None:
        self._groups: list[tuple[int, deque[Subscriber]]] = []

    def join(self, consumer: Subscriber) -> None:
        for priority, group in self._groups:
            if priority == consumer.priority:
                group.append(consumer)
                return
        self._groups.append((consumer.priority, deque([consumer])))
        self._groups.sort(key=lambda item: -item[0])

    def leave(self, consumer: Subscriber) -> bool:
        """Take `consumer` out; whether others may now take what it could not (never, here)."""
        for index, (_, group) in enumerate(self._groups):
            if consumer in group:
                group.remove(consumer)
                if not group:
                    del self._groups[index]
                break
        return False

    def next(self) -> Subscriber | None:
        """The next consumer with credit (None: all are full)."""
        for _, group in self._groups:
            for _ in range(len(group)):
                consumer = group[0]
                group.rotate(-1)
                if has_credit(consumer):
                    return consumer
        return None


class SingleActive:
    """One consumer gets every message; when it goes, the next in line does: the highest priority, the
    earliest among equals (RabbitMQ's single active consumer)."""

    def __init__(self) -> None:
        self._consumers: list[Subscriber] = []  # in the order they came
        self.active: Subscriber | None = None

    def join(self, consumer: Subscriber) -> None:
        self._consumers.append(consumer)
        if self.active is None:
            self.active = consumer

    def leave(self, consumer: Subscriber) -> bool:
        """Take `consumer` out; whether another one became the active consumer."""
        self._consumers.remove(consumer)
        if consumer is not self.active:
            return False
        self.active = max(self._consumers, key=lambda c: c.priority, default=None)
        return True

    def next(self) -> Subscriber | None:
        active = self.active
        return active if active is not None and has_credit(active) else None
