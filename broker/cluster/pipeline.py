"""A leader's appends in flight to one follower, sans-IO: several batches at once, in log order.

A batch goes as soon as nothing is in flight; while something is, only a batch of at least `MIN_BATCH`
entries goes (up to `DEPTH` in flight), so a backlog streams without waiting for round trips while a
trickle of small appends is batched by the round trip, as before.

One pipeline lasts from a probe (which gives the offset to send from, and the truncation the first batch
carries) to the first failure, after which the leader probes again and starts a new one. Batches go out
back to back, each starting where the previous one ended; the peer link keeps them in order and the
follower appends them in that order, refusing one that does not start at its end (and so every later one
of a broken pipeline). Its replies may come back in any order (each waits for a group fsync): a reply
says the follower holds everything below its end durably, so the pipeline's durable end only grows.
"""

from __future__ import annotations

from collections import deque

# Appends a leader has unanswered per follower: enough that a large backlog never waits for round trips,
# few enough that a follower that stops answering costs little to resend.
DEPTH = 8
# While one is unanswered, another goes only once this many entries wait: small appends wait for the reply
# and go together (as Nagle's rule does). On a busy machine each request costs every node a wake-up, a
# task and an fsync; sending each small batch at once measured worse confirm latency, not better
# (bench/RESULTS.md, session 5).
MIN_BATCH = 128


class AppendPipeline:
    def __init__(self, start: int, truncate: int, depth: int = DEPTH, min_batch: int = MIN_BATCH) -> None:
        self.next = start  # where the next batch starts
        self.truncate = truncate  # carried by the first batch only (-1: none)
        self.depth = depth
        self.min_batch = min_batch
        self.durable = 0  # the highest end a reply of this pipeline acknowledged
        self._in_flight: deque[int] = deque()  # ends of the batches sent and not acknowledged, in order

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def full(self) -> bool:
        return len(self._in_flight) >= self.depth

    def may_send(self, end: int) -> bool:
        """Whether a batch of the entries up to the log's `end` goes now (the first batch after a probe
        always does, even empty: it carries the truncation, or learns the follower's end)."""
        if not self._in_flight:
            return end > self.next or self.truncate >= 0
        return not self.full() and end - self.next >= self.min_batch

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
