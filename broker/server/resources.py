"""The resource monitor task: samples the broker's memory and its data directory's free space for the
node's alarms (broker/alarms.py holds the rules; this module only reads the system and sleeps)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import trio

from leveret.broker.alarms import ResourceMonitor, memory_limit
from leveret.broker.node import Node
from leveret.config import parse_size

log = logging.getLogger(__name__)

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, which returns free pages inside its heaps to the system; None elsewhere."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
        return trim
    except (OSError, AttributeError, TypeError):
        return None


class SystemSampler:
    """Linux: the resident set from /proc/self/statm, free space from statvfs (what `df` calls Available,
    as RabbitMQ reads it)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._trim = _malloc_trim()

    def memory_used(self) -> int:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE

    def release_free_memory(self) -> None:
        if self._trim is not None:
            self._trim(0)

    def disk_free(self) -> int:
        stat = os.statvfs(self.data_dir)
        return stat.f_bavail * stat.f_frsize


def total_memory() -> int | None:
    """MemTotal from /proc/meminfo, as RabbitMQ reads it on Linux; None when unreadable."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def build_monitor(node: Node) -> ResourceMonitor:
    resources = node.config.resources
    sampler = SystemSampler(Path(node.config.data_dir))
    watermark = resources.memory_high_watermark
    total = total_memory()
    limit: int | None
    if isinstance(watermark, float) and total is None:
        log.warning("cannot read the total memory from /proc/meminfo; memory alarms are off")
        limit = None
    else:
        limit = memory_limit(watermark, total or 0)
        if total is not None:
            log.info(
                "Memory high watermark set to %d MiB (%d bytes) of %d MiB (%d bytes) total",
                limit >> 20,
                limit,
                total >> 20,
                total,
            )
    disk_limit = parse_size(resources.disk_free_limit)
    log.info("Disk free limit set to %dMB", disk_limit // 1_000_000)
    return ResourceMonitor(node.alarms, sampler, memory_limit=limit, disk_free_limit=disk_limit)


async def run_resource_monitor(
    node: Node,
    monitor: ResourceMonitor | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Sample until cancelled. The first samples are taken before `started`, so a broker that starts out
    of memory or disk serves with its alarm already set."""
    monitor = monitor or build_monitor(node)
    due = monitor.poll(trio.current_time())
    task_status.started()
    # glibc keeps what the broker frees (closed channels and connections, delivered or purged messages) in
    # its heaps until asked: hand it back on the schedule's terms, so the resident set follows what the
    # broker holds. A burst of closes seen at a poll (at most 1 s apart) brings the release forward.
    release = node.memory_release
    release.released(trio.current_time())
    while True:
        await trio.sleep_until(min(due, release.due()))
        if trio.current_time() >= release.due():
            # In a worker thread: malloc_trim releases the GIL, and the loop goes on meanwhile.
            await trio.to_thread.run_sync(monitor.sampler.release_free_memory)
            release.released(trio.current_time())
        due = monitor.poll(trio.current_time())
