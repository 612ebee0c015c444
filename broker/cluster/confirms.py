"""Publisher confirms in a cluster: each position a channel waits for is a ticket of the node's gate.

A single node's channels wait for the store's durable position. A cluster node's wait for `safe`: the
highest ticket below which every ticket is released. A replicated enqueue's ticket is released once its
entry is held (fsynced) by every in-sync replica and those are a majority (broker/cluster/replication.py)
(every durable queue of a cluster is replicated: no confirm waits for the node's own store). Tickets are
released in any order and `safe` follows the lowest one still held, so a queue that holds its confirms
(no majority) holds back the node's later confirms too, until it is deposed (its tickets then fail).
"""

from __future__ import annotations

import heapq


class ConfirmGate:
    def __init__(self) -> None:
        self._issued = 0
        self._held: set[int] = set()
        self._heap: list[int] = []
        self.failed: set[int] = set()  # failed tickets not yet told to the channels (see take_failed)

    def ticket(self) -> int:
        self._issued += 1
        ticket = self._issued
        self._held.add(ticket)
        heapq.heappush(self._heap, ticket)
        return ticket

    def release(self, tickets: list[int]) -> None:
        self._held.difference_update(tickets)

    def fail(self, tickets: list[int]) -> None:
        """Their publishes get basic.nack. They stay held (`safe` stops below them: a channel must never
        take one for an ack) until the channels are told, from `take_failed`."""
        self.failed.update(tickets)

    def take_failed(self) -> set[int]:
        """The failed tickets, now released: the caller nacks them before it flushes any confirm."""
        failed, self.failed = self.failed, set()
        self._held.difference_update(failed)
        return failed

    def safe(self) -> int:
        """Every ticket up to this one is released (or failed)."""
        heap, held = self._heap, self._held
        while heap and heap[0] not in held:
            heapq.heappop(heap)
        return heap[0] - 1 if heap else self._issued
