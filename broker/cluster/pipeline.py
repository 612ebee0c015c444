"""A leader's appends in flight to one follower, sans-IO: several batches at once, in log order.

One pipeline lasts from a probe (which gives the offset to send from, and the truncation the first batch
carries) to the first failure, after which the leader probes again and starts a new one. Batches go out
back to back, each starting where the previous one ended; the peer link keeps them in order and the
follower appends them in that order, refusing one that does not start at its end (and so every later one
of a broken pipeline). Its replies may come back in any order (each waits for a group fsync): a reply
says the follower holds everything below its end durably, so the pipeline's durable end only grows.
"""

from __future__ import annotations

from collections import deque

# Appends a leader has unanswered per follower: enough that a batch never waits for the previous round
# trip, few enough that a follower that stops answering costs little to resend.
DEPTH = 8


class AppendPipeline:
    def __init__(self, start: int, truncate: int, depth: int = DEPTH) -> None:
        self.next = start  # where the next batch starts
        self.truncate = truncate  # carried by the first batch only (-1: none)
        self.depth = depth
        self.durable = 0  # the highest end a reply of this pipeline acknowledged
        self._in_flight: deque[int] = deque()  # ends of the batches sent and not acknowledged, in order

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def full(self) -> bool:
        return len(self._in_flight) >= self.depth

    def send(self, count: int) -> tuple[int, int]:
        """A batch of `count` entries from `next` goes out: returns its (start, truncate to)."""
        start, truncate = self.next, self.truncate
        self.next += count
        self.truncate = -1
        self._in_flight.append(self.next)
        return start, truncate

    def acknowledged(self, end: int) -> bool:
        """A reply: the follower holds everything below `end`. True if that moved the durable end."""
        if end > self.next:
            raise ValueError(f"acknowledged {end}, beyond what was sent ({self.next})")
        in_flight = self._in_flight
        while in_flight and in_flight[0] <= end:
            in_flight.popleft()
        if end <= self.durable:
            return False
        self.durable = end
        return True
