"""A consumer: a channel's subscription to one queue, with its own prefetch."""

from __future__ import annotations

from collections.abc import Sized
from typing import TYPE_CHECKING, Any, Protocol

from leveret.amqp.fastpath import shortstr

if TYPE_CHECKING:
    from leveret.broker.queues.entry import Entry
    from leveret.broker.queues.queue import Queue


class _Writable(Protocol):
    @property
    def writable(self) -> bool: ...


class ConsumerChannel(Protocol):
    """What a consumer needs of its channel (ChannelSession has it): queues know nothing of sessions."""

    @property
    def session(self) -> _Writable: ...

    @property
    def flow_active(self) -> bool: ...

    @property
    def global_prefetch(self) -> int: ...

    @property
    def unacked(self) -> Sized: ...

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

    def has_credit(self) -> bool:
        # The channel's flow and its global prefetch are checked here too: this runs for every delivery.
        channel = self.channel
        if self.no_ack:
            return channel.flow_active and channel.session.writable
        return (
            (not self.prefetch or self.unacked < self.prefetch)
            and channel.flow_active
            and (not channel.global_prefetch or len(channel.unacked) < channel.global_prefetch)
        )

    def deliver(self, entry: Entry) -> None:
        self.channel.deliver(self, entry)

    def cancelled_by_broker(self) -> None:
        self.channel.consumer_cancelled_by_broker(self)
