"""When to hand the memory the broker freed back to the system (the resource task does it, with glibc's
malloc_trim; broker/server/resources.py).

glibc keeps what is freed in its heaps until asked. Asking walks the heaps and holds their lock meanwhile
(a few ms for a small heap, about 0.2 s for a 200 MB one with many holes), so it is not done after every
close: every INTERVAL, and soon after a burst of closed channels and connections, which free much at once
(their buffers, tables and frames), at most once per BURST_GAP.
"""

from __future__ import annotations

INTERVAL = 10.0
# Closed channels and connections (together) that count as a burst, and the least time between two
# releases a burst brings forward.
BURST = 100
BURST_GAP = 2.0


class ReleaseSchedule:
    def __init__(self, now: float) -> None:
        self.closed = 0  # channels and connections closed since the last release
        self._last = now

    def note_closed(self) -> None:
        self.closed += 1

    def due(self) -> float:
        """The time of the next release."""
        return self._last + (BURST_GAP if self.closed >= BURST else INTERVAL)

    def released(self, now: float) -> None:
        self.closed = 0
        self._last = now
