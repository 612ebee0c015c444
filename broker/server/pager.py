"""The pager task: page-outs and read-backs of queues larger than memory, the file work off the event loop."""

from __future__ import annotations

import trio

from leveret.broker.pager import NodePager

# How often a budget left exceeded (nothing could be paged out then) is looked at again.
TICK = 1.0


async def run_pager(
    pager: NodePager, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    wakeup = trio.Event()

    def wake() -> None:
        wakeup.set()

    pager.wake = wake
    task_status.started()
    while True:
        while (work := pager.begin()) is not None:
            await trio.to_thread.run_sync(work.run)
            pager.complete(work)
        with trio.move_on_after(TICK) as idle:
            await wakeup.wait()
        if idle.cancelled_caught:
            pager.tick()
        wakeup = trio.Event()
