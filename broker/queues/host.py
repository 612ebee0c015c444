"""What a queue needs from the virtual host it lives in (VirtualHost is one)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from leveret.broker.exchanges.base import Exchange
    from leveret.broker.message import Message
    from leveret.broker.queues.deadlines import Deadlines
    from leveret.broker.queues.effects import Effect
    from leveret.broker.queues.paging import Pager


class Destination(Protocol):
    """A queue as routing finds it: what dead-lettering needs to republish into it."""

    @property
    def name(self) -> str: ...

    def enqueue(self, message: Message) -> int | None: ...


class QueueHost(Protocol):
    name: str
    exchanges: dict[str, Exchange]
    # The node's monotonic clock (seconds) and timers: queues never read the time any other way.
    clock: Callable[[], float]
    deadlines: Deadlines
    pager: Pager  # the node's memory budget for ready messages, and paging
    # Carries out a queue's effects (broker/executor.py); `queue` is the Queue (typed loosely here).
    execute: Callable[[Any, Effect], None]

    def route(self, exchange: Exchange, message: Message) -> Sequence[Destination]: ...

    # `queue` is the Queue asking (typed loosely: this protocol sits below queue.py).
    def remove_queue(self, queue: Any) -> None: ...

    def add_lifecycle(self, queue: Any) -> None:
        """Give a plain queue the lifecycle it now needs (an expiration, a consumer priority)."""
