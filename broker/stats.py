"""Message counts for the management API's message_stats: publish, deliver_get, ack, confirm and redeliver
per channel (and so per vhost and node), publish, deliver_get, ack and redeliver per queue, publish_in and
publish_out per exchange.

Channels, queues and exchanges count in plain ints as they work (ChannelSession.published, .delivered,
.acked, .confirmed, .redelivered; Queue.published, .delivered, .acked, .redelivered; Exchange.published_in
and what its routes counted); nothing is allocated per message. The node keeps what its closed channels
counted, so node-wide totals never go back; rates come from sampling these on a timer
(broker/management/rates.py).
"""

from __future__ import annotations

from typing import Protocol


class _Vhost(Protocol):
    @property
    def name(self) -> str: ...


class ChannelSession(Protocol):
    """What is counted on each channel (broker/session/channel.py's ChannelSession)."""

    published: int
    acked: int
    confirmed: int
    redelivered: int

    @property
    def delivered(self) -> int: ...

    @property
    def vhost(self) -> _Vhost: ...


class CountedQueue(Protocol):
    delivered: int
    acked: int
    redelivered: int

    @property
    def published(self) -> int: ...


class CountedExchange(Protocol):
    published_in: int
    routed_in: int
    routed_out: int
    missed_inline: int


# RabbitMQ's names, in the order of the counts.
STATS = ("publish", "deliver_get", "ack", "confirm", "redeliver")
QUEUE_STATS = ("publish", "deliver_get", "ack", "redeliver")
EXCHANGE_STATS = ("publish_in", "publish_out")
Counts = tuple[int, ...]


def channel_counts(channel: ChannelSession) -> Counts:
    return (channel.published, channel.delivered, channel.acked, channel.confirmed, channel.redelivered)


def queue_counts(queue: CountedQueue) -> Counts:
    return (queue.published, queue.delivered, queue.acked, queue.redelivered)


def exchange_counts(exchange: CountedExchange) -> Counts:
    """publish_out is every copy routed to a queue: what the vhost's routing found, and the default
    exchange's inlined publishes that found their queue (one each)."""
    inline = exchange.published_in - exchange.routed_in - exchange.missed_inline
    return (exchange.published_in, exchange.routed_out + inline)


def added(a: Counts, b: Counts) -> Counts:
    return tuple(x + y for x, y in zip(a, b, strict=True))


NONE: Counts = (0, 0, 0, 0, 0)


class MessageTotals:
    """What the node's closed channels counted, and what was published and got over HTTP, by vhost."""

    def __init__(self) -> None:
        self.closed: dict[str, Counts] = {}

    def channel_closed(self, channel: ChannelSession) -> None:
        self._add(channel.vhost.name, channel_counts(channel))

    def count_direct(self, vhost: str, published: int = 0, delivered: int = 0, acked: int = 0) -> None:
        """Publishes and gets made without a channel (the management API's HTTP ones)."""
        self._add(vhost, (published, delivered, acked, 0, 0))

    def _add(self, vhost: str, counts: Counts) -> None:
        self.closed[vhost] = added(self.closed.get(vhost, NONE), counts)
