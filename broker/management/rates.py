"""Message rates for message_stats: the node's and each channel's counts (broker/stats.py), sampled every
few seconds; a rate is the change over the last interval, per second, as RabbitMQ's `*_details.rate`."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from leveret.broker.stats import STATS, Counts, added, channel_counts

if TYPE_CHECKING:
    from leveret.broker.node import Node
    from leveret.broker.session.channel import ChannelSession

# RabbitMQ's collect_statistics_interval is 5 s.
SAMPLE_INTERVAL = 5.0
NO_RATES = (0.0, 0.0, 0.0, 0.0)


def node_counts(node: Node) -> Counts:
    counts = node.message_totals.closed
    for session in node.connections:
        for channel in session.channels.values():
            counts = added(counts, channel_counts(channel))
    return counts


class MessageRates:
    def __init__(self, node: Node, clock: Callable[[], float]) -> None:
        self.node = node
        self.clock = clock
        self._node_sample: tuple[float, Counts] = (clock(), node_counts(node))
        self._node_rates: tuple[float, ...] = NO_RATES
        self._channel_samples: weakref.WeakKeyDictionary[ChannelSession, tuple[float, Counts]] = (
            weakref.WeakKeyDictionary()
        )
        self._channel_rates: weakref.WeakKeyDictionary[ChannelSession, tuple[float, ...]] = (
            weakref.WeakKeyDictionary()
        )

    def sample(self) -> None:
        now = self.clock()
        self._node_sample, self._node_rates = _advance(self._node_sample, now, node_counts(self.node))
        for session in self.node.connections:
            for channel in session.channels.values():
                counts = channel_counts(channel)
                previous = self._channel_samples.get(channel, (now, counts))
                self._channel_samples[channel], self._channel_rates[channel] = _advance(previous, now, counts)

    def overview(self) -> dict[str, Any]:
        return message_stats(node_counts(self.node), self._node_rates)

    def channel(self, channel: ChannelSession) -> dict[str, Any]:
        return message_stats(channel_counts(channel), self._channel_rates.get(channel, NO_RATES))


def _advance(
    previous: tuple[float, Counts], now: float, counts: Counts
) -> tuple[tuple[float, Counts], tuple[float, ...]]:
    then, before = previous
    elapsed = now - then
    if elapsed <= 0:
        return previous, NO_RATES
    return (now, counts), tuple((c - b) / elapsed for c, b in zip(counts, before, strict=True))


def message_stats(counts: Counts, rates: tuple[float, ...]) -> dict[str, Any]:
    """RabbitMQ's shape: {"publish": n, "publish_details": {"rate": r}, ...}, a stat only once it counted."""
    stats: dict[str, Any] = {}
    for name, count, rate in zip(STATS, counts, rates, strict=True):
        if count:
            stats[name] = count
            stats[f"{name}_details"] = {"rate": round(rate, 1)}
    return stats


async def run_sampler(rates: MessageRates, interval: float = SAMPLE_INTERVAL) -> None:
    while True:
        await trio.sleep(interval)
        rates.sample()
