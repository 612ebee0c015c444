"""What the bench reads about a broker process from /proc, and the open-files limit it raises."""

from __future__ import annotations

import os
import resource

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as file:
        # The command name may hold spaces and parentheses: split after its closing one.
        fields = file.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5) (utime, stime) sit at 11 and 12 once pid and comm are cut off.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as file:
        return int(file.read().split()[1]) * PAGE_SIZE


def written_bytes(pid: int) -> int:
    """Bytes the process sent to the storage layer (page cache included, sockets not): its disk writes."""
    with open(f"/proc/{pid}/io") as file:
        for line in file:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise ValueError(f"no write_bytes in /proc/{pid}/io")


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard one; brokers and load generators inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def open_files_limit(pid: int) -> int | None:
    """The soft limit a running process actually has (a start script may have lowered it)."""
    with open(f"/proc/{pid}/limits") as file:
        for line in file:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None
