"""Message counts for the management API's message_stats: publish, deliver_get, ack and confirm.

Each channel counts in plain ints as it works (ChannelSession.published, .delivered, .acked, .confirmed);
nothing is allocated per message. The node keeps what its closed channels counted, so node-wide totals
never go back; rates come from sampling these on a timer (broker/management/rates.py).
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

    @property
    def delivered(self) -> int: ...

    @property
    def vhost(self) -> _Vhost: ...

# RabbitMQ's names, in the order of `counts`.
STATS = ("publish", "deliver_get", "ack", "confirm")
Counts = tuple[int, int, int, int]


def channel_counts(channel: ChannelSession) -> Counts:
    return (channel.published, channel.delivered, channel.acked, channel.confirmed)


def added(a: Counts, b: Counts) -> Counts:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3])


NONE: Counts = (0, 0, 0, 0)


class MessageTotals:
    """What the node's closed channels counted, and what was published and got over HTTP, by vhost."""

    def __init__(self) -> None:
        self.closed: dict[str, Counts] = {}

    def channel_closed(self, channel: ChannelSession) -> None:
        self._add(channel.vhost.name, channel_counts(channel))

    def count_direct(self, vhost: str, published: int = 0, delivered: int = 0, acked: int = 0) -> None:
        """Publishes and gets made without a channel (the management API's HTTP ones)."""
        self._add(vhost, (published, delivered, acked, 0))

    def _add(self, vhost: str, counts: Counts) -> None:
        self.closed[vhost] = added(self.closed.get(vhost, NONE), counts)
