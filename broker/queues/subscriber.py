"""What a queue needs of a consumer: whether it can take a message now, and how to hand it one.

A Protocol, so that queues know nothing of channels or sessions (broker/queues/consumer.py has the
channel's consumer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from leveret.broker.queues.entry import Entry


# What a delivery adds to its connection's output beyond the message's size (Message.size): frame heads,
# the deliver method's fields and frame ends.
DELIVERY_OVERHEAD = 64


class CreditPool:
    """Credit that several consumers share and the queues draw on as they deliver: a channel's deliveries
    under its basic.qos(global) limit, or the bytes a connection's consumers may still be handed before
    its socket takes some (its output bound, broker/session/output.py)."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left


class _Deliverer(Protocol):
    # `consumer` is the Subscriber itself (typed loosely: a channel knows its own consumer class).
    def deliver(self, consumer: Any, entry: Entry) -> None: ...


class Subscriber(Protocol):
    @property
    def no_ack(self) -> bool: ...

    @property
    def exclusive(self) -> bool: ...

    @property
    def priority(self) -> int: ...

    @property
    def channel(self) -> _Deliverer:
        """`consumer.channel.deliver(consumer, entry)` is `consumer.deliver(entry)` with one call less,
        for the hot path."""

    # How many more messages it may take: set by the channel's credit commands (Queue.credit), used
    # by the queue, one per delivery. Never read from the channel at delivery time.
    credit: int
    # The channel's share of a basic.qos(global) limit, which every queue it consumes from draws on
    # (None: no such limit). The one credit a queue shares: RabbitMQ's quorum queues refuse global QoS.
    pool: CreditPool | None
    # The connection's output bound in bytes (each delivery draws its message's size on it).
    output: CreditPool

    def deliver(self, entry: Entry) -> None: ...

    def cancelled_by_broker(self) -> None:
        """The queue went away."""
