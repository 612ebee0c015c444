"""A consumer: a channel's subscription to one queue, with its own prefetch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from leveret.amqp.fastpath import shortstr

if TYPE_CHECKING:
    from leveret.broker.queues.queue import Entry, Queue
    from leveret.broker.session.channel import ChannelSession


class Consumer:
    __slots__ = (
        "tag", "tag_raw", "queue", "channel", "no_ack", "exclusive", "prefetch", "unacked", "arguments",
        "priority",
    )

    def __init__(
        self,
        tag: str,
        queue: Queue,
        channel: ChannelSession,
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
        # The channel's flow, its global prefetch and the connection's output bound are checked here
        # too: this runs for every delivery.
        channel = self.channel
        if not (channel.flow_active and channel.session.writable):
            return False
        return self.no_ack or (
            (not self.prefetch or self.unacked < self.prefetch)
            and (not channel.global_prefetch or len(channel.unacked) < channel.global_prefetch)
        )

    def deliver(self, entry: Entry) -> None:
        self.channel.deliver(self, entry)
