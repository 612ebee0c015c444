"""The group-commit task: fsync batches off the event loop (in its own thread), then release the confirms
they cover."""

from __future__ import annotations

import logging

import trio

from leveret.broker.node import Node
from leveret.broker.persistence import Commit, Persistence
from leveret.broker.server.commit_thread import CommitThread
from leveret.broker.server.connection_task import direct_writes

log = logging.getLogger(__name__)

# After a failed write (a full disk, an I/O error) wait before retrying, rather than spinning.
RETRY_DELAY = 1.0
# How long records nobody waits for (acks, first deliveries) may wait for an urgent one (a publish) to share
# its fsync. A consumer acking at the rate a producer publishes then costs no fsync of its own; an ack in
# the last moments before a crash may be lost anyway (see "Durability" in docs/ARCHITECTURE.md).
SETTLE_DELAY = 0.02


class _Wakeup:
    def __init__(self) -> None:
        self.event = trio.Event()

    def set(self) -> None:
        self.event.set()


async def commit_once(
    node: Node, persistence: Persistence, thread: CommitThread | None = None
) -> Commit | None:
    """Commit what is pending, if anything, and return that commit. While one batch is in the worker
    thread, publishes keep appending to the next one: that is the group in group commit."""
    commit = persistence.begin()
    if commit is None:
        return None
    # A batch once begun is completed, whatever cancels this task meanwhile (the shutdown): a cancel
    # landing as the worker thread returns would leave the store waiting for it, and the final commit
    # at shutdown would fail without leaving the clean-shutdown marker.
    with trio.CancelScope(shield=True):
        if thread is not None:
            await thread.run(commit.run)
        else:
            await trio.to_thread.run_sync(commit.run)
        with direct_writes():  # the confirms go out now, not after a switch to each writer task
            failed = persistence.complete(commit)
            node.commit_completed(failed, commit.error)
    if commit.error is not None:
        await trio.sleep(RETRY_DELAY)
    return commit


async def commit_pending(node: Node, persistence: Persistence, thread: CommitThread | None = None) -> None:
    """Commit until nothing is pending."""
    while await commit_once(node, persistence, thread) is not None:
        pass


async def run_group_commit(
    node: Node, persistence: Persistence, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    wakeup = _Wakeup()
    thread = CommitThread()
    persistence.wake = wakeup.set
    wakeup.set()  # recovery may have left work pending before there was anyone to wake
    task_status.started()
    try:
        while True:
            await wakeup.event.wait()
            wakeup.event = trio.Event()
            if not persistence.urgent:
                with trio.move_on_after(SETTLE_DELAY):
                    await wakeup.event.wait()  # the first urgent record wakes it at once
                wakeup.event = trio.Event()
            # One batch per round: what is appended meanwhile wakes the next, urgent or held back; a
            # failed batch's writes, kept by the store, are retried without waiting for new ones.
            commit = await commit_once(node, persistence, thread)
            if commit is not None and commit.error is not None:
                wakeup.set()
    finally:
        # On shutdown, whatever was appended still reaches the disk.
        try:
            with trio.CancelScope(shield=True):
                await commit_pending(node, persistence, thread)
        finally:
            thread.close()
