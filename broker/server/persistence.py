"""The group-commit task: fsync batches off the event loop, then release the confirms they cover."""

from __future__ import annotations

import logging

import trio

from leveret.broker.node import Node
from leveret.broker.persistence import Persistence

log = logging.getLogger(__name__)

# After a failed write (a full disk, an I/O error) wait before retrying, rather than spinning.
RETRY_DELAY = 1.0


class _Wakeup:
    def __init__(self) -> None:
        self.event = trio.Event()

    def set(self) -> None:
        self.event.set()


async def commit_pending(node: Node, persistence: Persistence) -> None:
    """Commit until nothing is pending. While one batch is in the worker thread, publishes keep
    appending to the next one: that is the group in group commit."""
    while (commit := persistence.begin()) is not None:
        # A batch once begun is completed, whatever cancels this task meanwhile (the shutdown): a cancel
        # landing as the worker thread returns would leave the store waiting for it, and the final commit
        # at shutdown would fail without leaving the clean-shutdown marker.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(commit.run)
            failed = persistence.complete(commit)
            node.commit_completed(failed, commit.error)
        if commit.error is not None:
            await trio.sleep(RETRY_DELAY)


async def run_group_commit(
    node: Node, persistence: Persistence, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    wakeup = _Wakeup()
    persistence.wake = wakeup.set
    wakeup.set()  # recovery may have left work pending before there was anyone to wake
    task_status.started()
    try:
        while True:
            await wakeup.event.wait()
            wakeup.event = trio.Event()
            await commit_pending(node, persistence)
    finally:
        # On shutdown, whatever was appended still reaches the disk.
        with trio.CancelScope(shield=True):
            await commit_pending(node, persistence)
