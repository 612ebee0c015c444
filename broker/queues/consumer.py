"""A consumer: a channel's subscription to one queue, with its own prefetch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from leveret.amqp.fastpath import shortstr

if TYPE_CHECKING:
    from leveret.broker.queues.entry import Entry
    from leveret.broker.queues.queue import Queue
    from leveret.broker.queues.subscriber import CreditPool

# The credit of a consumer with no prefetch limit: more than any queue holds.
UNLIMITED = 1 << 62


class _Output(Protocol):
    @property
    def output(self) -> CreditPool: ...


class ConsumerChannel(Protocol):
    """What a consumer needs of its channel (ChannelSession has it): queues know nothing of sessions."""

    @property
    def session(self) -> _Output: ...

    @property
    def flow_active(self) -> bool: ...

    @property
    def credit_pool(self) -> CreditPool | None: ...

    @property
    def closed(self) -> bool: ...

    def deliver(self, consumer: Consumer, entry: Entry) -> None: ...

    def consumer_cancelled_by_broker(self, consumer: Consumer) -> None: ...


class Consumer:
    __slots__ = (
        "tag",
        "tag_raw",
        "queue",
        "channel",
        "no_ack",
        "exclusive",
        "prefetch",
        "unacked",
        "arguments",
        "priority",
        "credit",
        "pool",
        "output",
    )

    def __init__(
        self,
        tag: str,
        queue: Queue,
        channel: ConsumerChannel,
        *,
        no_ack: bool,
        exclusive: bool,
        prefetch: int,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.tag = tag
        self.tag_raw = shortstr(tag)  # encoded once, sent with every delivery
        self.queue = queue
        self.channel = channel
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch  # 0: unlimited (RabbitMQ's per-consumer basic.qos, global=false)
        self.unacked = 0
        self.arguments = arguments or {}
        # x-priority (validated at basic.consume): higher ones get messages while they have credit.
        self.priority: int = self.arguments.get("x-priority", 0)
        # What the queue may still send it: the queue's state, set by credit commands (Queue.credit).
        self.credit = self.wanted_credit()
        self.pool = None if no_ack else channel.credit_pool  # no-ack deliveries count in no limit
        self.output = channel.session.output  # the connection's, shared by all its consumers

    def wanted_credit(self) -> int:
        """How many more messages the channel can take for this consumer now: its prefetch and the channel's
        flow. The channel sends it to the queue whenever one of those changes. (The channel-wide limit is
        the consumer's `pool`, the bound on the connection's output its `output`.)"""
        channel = self.channel
        if not channel.flow_active:
            return 0
        if self.no_ack:
            return UNLIMITED
        return max(self.prefetch - self.unacked, 0) if self.prefetch else UNLIMITED

    def update_credit(self) -> None:
        """Tell the queue what `wanted_credit` is now, if that changed."""
        credit = self.wanted_credit()
        if credit != self.credit:
            self.queue.credit(self, credit)

    def deliver(self, entry: Entry) -> None:
        self.channel.deliver(self, entry)

    def cancelled_by_broker(self) -> None:
        self.channel.consumer_cancelled_by_broker(self)
