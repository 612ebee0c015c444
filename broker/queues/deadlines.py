"""The node's queue timers: at most one pending deadline per queue, in a heap one server task sleeps on.

A queue asks to be called back at its next deadline (its head message's expiry, or its own expiry when
unused). Asking for a later time than the one pending changes nothing: the earlier call comes, finds
nothing due, and the queue asks again. So a queue never has more than one live entry, whatever it holds.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

# Deadlines are rounded up to this grid (seconds), so that a stream of messages expiring a few
# microseconds apart is handled in batches rather than with one wake-up each.
RESOLUTION = 0.005


class Timed(Protocol):
    def on_deadline(self, now: float) -> None: ...


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timed]] = []
        self._pending: dict[Timed, float] = {}
        self._order = itertools.count()
        # Set by the server: the earliest deadline moved earlier, wake the task sleeping on it.
        self.wake: Callable[[], None] = lambda: None

    def schedule(self, target: Timed, when: float) -> None:
        when = math.ceil(when / RESOLUTION) * RESOLUTION
        pending = self._pending.get(target)
        if pending is not None and pending <= when:
            return
        earliest = self.next_deadline()
        self._pending[target] = when
        heapq.heappush(self._heap, (when, next(self._order), target))
        self._compact()
        if earliest is None or when < earliest:
            self.wake()

    def cancel(self, target: Timed) -> None:
        if self._pending.pop(target, None) is not None:
            self._compact()

    def _compact(self) -> None:
        # Superseded and cancelled entries stay in the heap until their time; a queue deleted long before
        # its deadline (a reply queue with a day-long x-expires) would be kept alive by one. Rebuild the
        # heap when they outnumber the live ones.
        if len(self._heap) > 2 * len(self._pending) + 64:
            self._heap = [(when, next(self._order), target) for target, when in self._pending.items()]
            heapq.heapify(self._heap)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._pending.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # superseded by an earlier deadline, or cancelled
        return heap[0][0] if heap else None

    def fire(self, now: float) -> None:
        """Call every target due by `now`. Targets that schedule again are called on a later `fire`,
        so that one busy queue cannot keep the caller from yielding."""
        due = []
        while (when := self.next_deadline()) is not None and when <= now:
            target = heapq.heappop(self._heap)[2]
            del self._pending[target]
            due.append(target)
        for target in due:
            try:
                target.on_deadline(now)
            except Exception:
                # A bug in one queue must not stop every other queue's timers (nor the node).
                log.exception("timer of %r failed", target)
