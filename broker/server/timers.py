"""The node's timers: queue deadlines (message TTL, queue expiry) and the consumer acknowledgement tick.

Both run on trio's clock, the one the node was given, so MockClock drives them in tests.
"""

from __future__ import annotations

import logging
import math

import trio

from leveret.broker.node import Node
from leveret.broker.queues.deadlines import Deadlines
from leveret.broker.session.ack_timeout import tick_interval

log = logging.getLogger(__name__)


async def run_timers(node: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(run_deadlines, node.deadlines)
        nursery.start_soon(run_ack_timeouts, node)
        task_status.started()


async def run_deadlines(
    deadlines: Deadlines, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Sleep until the earliest queue deadline, or until a queue asks for an earlier one; then fire."""
    wakeup = trio.Event()

    def wake() -> None:
        wakeup.set()

    deadlines.wake = wake
    task_status.started()
    while True:
        when = deadlines.next_deadline()
        with trio.move_on_at(math.inf if when is None else when):
            await wakeup.wait()
        wakeup = trio.Event()
        deadlines.fire(trio.current_time())


async def run_ack_timeouts(node: Node) -> None:
    """Each tick, close the channels whose consumers held a delivery past their acknowledgement timeout."""
    interval = tick_interval(node.config.limits.consumer_timeout)
    while True:
        await trio.sleep(interval)
        now = trio.current_time()
        for session in list(node.connections):
            try:
                session.check_ack_timeouts(now)
            except Exception:
                log.exception("acknowledgement timeout check of %s failed", session.peer)
