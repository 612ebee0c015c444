"""The consumer acknowledgement timeout (RabbitMQ's `consumer_timeout`), without a clock read per delivery.

A periodic tick (broker/server/timers.py) marks each channel with (now, its next delivery tag). Every tag
below a mark's was delivered by that mark's time, so the oldest unacked delivery is at least as old as
the earliest mark above its tag. Detection is at most one tick late, like RabbitMQ's channel tick.
"""

from __future__ import annotations

from collections import deque

# RabbitMQ checks once a minute (channel_tick_interval); shorter timeouts get a tenth of their length.
MAX_TICK = 60.0


def tick_interval(consumer_timeout_ms: int | None) -> float:
    if not consumer_timeout_ms:
        return MAX_TICK
    return min(MAX_TICK, consumer_timeout_ms / 1000 / 10)


def timeout_text(channel: int, timeout_ms: int) -> str:
    return (
        f"delivery acknowledgement on channel {channel} timed out. Timeout value used: {timeout_ms} ms. "
        "This timeout value can be configured, see consumers doc guide to learn more"
    )


class DeliveryMarks:
    __slots__ = ("_marks",)

    def __init__(self) -> None:
        # Made at the first unacked delivery: a deque costs about 760 bytes, and most channels never need it.
        self._marks: deque[tuple[float, int]] | None = None

    def tick(self, now: float, oldest_unacked: int | None, next_tag: int) -> float:
        """Mark this tick; return how long ago, at least, `oldest_unacked` was delivered (0 if none)."""
        marks = self._marks
        if oldest_unacked is None:
            if marks:
                marks.clear()
            return 0.0
        if marks is None:
            marks = self._marks = deque()
        while marks and marks[0][1] <= oldest_unacked:
            marks.popleft()  # it says nothing about deliveries from oldest_unacked on
        if not marks or marks[-1][1] != next_tag:
            marks.append((now, next_tag))
        return now - marks[0][0]
