"""What a queue needs from the virtual host it lives in (VirtualHost is one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from leveret.broker.exchanges.base import Exchange
    from leveret.broker.message import Message
    from leveret.broker.queues.deadlines import Deadlines
    from leveret.broker.queues.paging import Pager
    from leveret.broker.queues.queue import Queue


class QueueHost(Protocol):
    name: str
    exchanges: dict[str, Exchange]
    # The node's monotonic clock (seconds) and timers: queues never read the time any other way.
    clock: Callable[[], float]
    deadlines: Deadlines
    pager: Pager  # the node's memory budget for ready messages, and paging

    def route(self, exchange: Exchange, message: Message) -> list[Queue]: ...

    def remove_queue(self, queue: Queue) -> None: ...
