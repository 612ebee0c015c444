"""Resource alarms, as RabbitMQ raises them: memory use above the high watermark, free disk space below
the limit. While either is set, connections that publish are blocked (broker/session/throttle.py).

Synchronous and clock-free: the server's sampling task (broker/server/resources.py) calls
`ResourceMonitor.poll(now)` with trio's clock; tests drive it with a fake sampler and their own `now`.
Like RabbitMQ's vm_memory_monitor and rabbit_disk_monitor there is no hysteresis: an alarm is set when
a sample crosses its limit and cleared by the first sample back on the right side of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from leveret.config import parse_size

log = logging.getLogger(__name__)

MEMORY = "memory"
DISK = "disk"

# RabbitMQ samples memory every second (memory_monitor_interval).
MEMORY_CHECK_INTERVAL = 1.0
# Disk space is sampled more often the closer it is to the limit: the time a fast writer would need to
# fill the margin, within these bounds (RabbitMQ's disk monitor does the same, from 100 ms up).
DISK_CHECK_MIN_INTERVAL = 0.1
DISK_CHECK_MAX_INTERVAL = 1.0
FAST_WRITE_RATE = 250_000_000  # bytes per second; RabbitMQ's disk monitor assumes the same

_BANNER = (
    "\n\n**********************************************************\n"
    "*** Publishers will be blocked until this alarm clears ***\n"
    "**********************************************************"
)


def blocked_reason(active: frozenset[str]) -> str:
    """connection.blocked's reason text, RabbitMQ's words: "low on memory", "low on disk"."""
    return "low on " + " & ".join(resource for resource in (MEMORY, DISK) if resource in active)


def memory_limit(watermark: float | str | int, total_memory: int) -> int:
    """The high watermark in bytes: a float is a fraction of total memory, anything else a size."""
    if isinstance(watermark, float):
        return int(total_memory * watermark)
    return parse_size(watermark)


class ResourceAlarms:
    """Which resource alarms are set; `on_change(active)` hears of every change of that set.

    The disk alarm has two causes: free space below the limit, and a store whose last commit failed (a
    full disk often shows first as ENOSPC from a write). Publishes during a failing commit are nacked
    anyway, so blocking publishers, as RabbitMQ's disk alarm does, keeps them from piling messages into
    memory that cannot be stored; consumers keep acknowledging, which frees segments. The alarm clears
    with the first commit that succeeds again.
    """

    def __init__(self, node_name: str, on_change: Callable[[frozenset[str]], None]) -> None:
        self.node_name = node_name
        self.on_change = on_change
        self.active: frozenset[str] = frozenset()
        self._memory_high = False
        self._disk_low = False
        self._store_failing = False

    def memory_sampled(self, used: int, limit: int) -> None:
        high = used > limit
        if high != self._memory_high:
            self._memory_high = high
            state = "set" if high else "clear"
            log.info("vm_memory_high_watermark %s. Memory used:%d allowed:%d", state, used, limit)
            self._update()

    def disk_sampled(self, free: int, limit: int) -> None:
        low = free < limit
        if low != self._disk_low:
            self._disk_low = low
            state = "insufficient" if low else "sufficient"
            log.info("Free disk space is %s. Free bytes: %d. Limit: %d", state, free, limit)
            self._update()

    def commit_finished(self, error: OSError | None) -> None:
        """A group commit ended; `error` is its write failure, if it had one."""
        failing = error is not None
        if failing != self._store_failing:
            self._store_failing = failing
            if failing:
                log.error("the message store cannot write (%s); publishes are nacked until it can", error)
            else:
                log.info("the message store writes again")
            self._update()

    def _update(self) -> None:
        active = frozenset(
            resource
            for resource, on in ((MEMORY, self._memory_high), (DISK, self._disk_low or self._store_failing))
            if on
        )
        if active == self.active:
            return
        for resource in sorted(active - self.active):
            log.warning("%s resource limit alarm set on node %s.%s", resource, self.node_name, _BANNER)
        for resource in sorted(self.active - active):
            log.warning("%s resource limit alarm cleared on node %s", resource, self.node_name)
        self.active = active
        self.on_change(active)


class Sampler(Protocol):
    def memory_used(self) -> int:
        """Bytes of memory the broker uses (its resident set)."""
        ...

    def release_free_memory(self) -> None:
        """Hand memory the process has freed but its allocator keeps back to the system."""
        ...

    def disk_free(self) -> int:
        """Bytes free for the broker's data directory."""
        ...


class ResourceMonitor:
    """Samples what is due and feeds the alarms. `memory_limit` None: memory is not watched."""

    def __init__(
        self, alarms: ResourceAlarms, sampler: Sampler, *, memory_limit: int | None, disk_free_limit: int
    ) -> None:
        self.alarms = alarms
        self.sampler = sampler
        self.memory_limit = memory_limit
        self.disk_free_limit = disk_free_limit
        self._next_memory = float("-inf") if memory_limit is not None else float("inf")
        self._next_disk = float("-inf")

    def poll(self, now: float) -> float:
        """Take the samples due at `now`; returns when to poll next."""
        if now >= self._next_memory:
            assert self.memory_limit is not None
            self._next_memory = now + MEMORY_CHECK_INTERVAL
            try:
                used = self.sampler.memory_used()
                if used > self.memory_limit:
                    # The allocator may keep what was freed since (glibc keeps freed chunks in its heaps,
                    # so the resident set would stay high after a purge): give that back and look again,
                    # so that the alarm is about what the broker holds, and clears once it is freed.
                    self.sampler.release_free_memory()
                    used = self.sampler.memory_used()
            except OSError as exc:
                log.error("cannot read the broker's memory use: %s", exc)
            else:
                self.alarms.memory_sampled(used, self.memory_limit)
        if now >= self._next_disk:
            self._next_disk = now + DISK_CHECK_MAX_INTERVAL
            try:
                free = self.sampler.disk_free()
            except OSError as exc:
                log.error("cannot read the free disk space: %s", exc)
            else:
                self.alarms.disk_sampled(free, self.disk_free_limit)
                margin = (free - self.disk_free_limit) / FAST_WRITE_RATE
                if margin > 0:
                    self._next_disk = now + min(max(margin, DISK_CHECK_MIN_INTERVAL), DISK_CHECK_MAX_INTERVAL)
        return min(self._next_memory, self._next_disk)
