"""The clean-shutdown marker: a file that exists only from a clean stop to the next start.

A message's `delivered` record reaches the disk with the group commit after its delivery, so after a
crash the broker cannot know which recovered messages a client already received. Like RabbitMQ's
classic queues, it then flags every recovered message redelivered; after a clean stop, only those whose
delivery was recorded.
"""

from __future__ import annotations

import os
from pathlib import Path

from .segments import fsync_directory

MARKER = "clean-shutdown"


def take(directory: Path) -> bool:
    """Whether the last stop was clean. Blocking: removes the marker durably, so that a crash from now on
    is not mistaken for a clean stop."""
    marker = directory / MARKER
    try:
        marker.unlink()
    except FileNotFoundError:
        return False
    fsync_directory(directory)
    return True


def leave(directory: Path) -> None:
    """Record a clean stop; call only when every append is on disk. Blocking."""
    fd = os.open(directory / MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(directory)
