"""Message rates for message_stats: the node's, each vhost's and each channel's counts (broker/stats.py),
sampled every few seconds; a rate is the change over the last interval, per second, as RabbitMQ's
`*_details.rate`."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, MutableMapping
from typing import TYPE_CHECKING, Any

import trio

from leveret.broker.stats import NONE, STATS, Counts, added, channel_counts

if TYPE_CHECKING:
    from leveret.broker.node import Node
    from leveret.broker.session.channel import ChannelSession

# RabbitMQ's collect_statistics_interval is 5 s.
SAMPLE_INTERVAL = 5.0
NO_RATES = (0.0, 0.0, 0.0, 0.0)
Sample = tuple[float, Counts]


def vhost_counts(node: Node) -> dict[str, Counts]:
    counts = {name: node.message_totals.closed.get(name, NONE) for name in node.vhosts}
    for session in node.connections:
        for channel in session.channels.values():
            name = channel.vhost.name
            counts[name] = added(counts.get(name, NONE), channel_counts(channel))
    return counts


def node_counts(node: Node) -> Counts:
    total = NONE
    for counts in [*vhost_counts(node).values(), *_deleted_vhosts(node)]:
        total = added(total, counts)
    return total


def _deleted_vhosts(node: Node) -> list[Counts]:
    return [counts for name, counts in node.message_totals.closed.items() if name not in node.vhosts]


class MessageRates:
    def __init__(self, node: Node, clock: Callable[[], float]) -> None:
        self.node = node
        self.clock = clock
        self._node: tuple[Sample, tuple[float, ...]] = ((clock(), node_counts(node)), NO_RATES)
        start = clock()
        self._vhosts: dict[str, tuple[Sample, tuple[float, ...]]] = {
            name: ((start, counts), NO_RATES) for name, counts in vhost_counts(node).items()
        }
        self._channels: weakref.WeakKeyDictionary[ChannelSession, tuple[Sample, tuple[float, ...]]] = (
            weakref.WeakKeyDictionary()
        )

    def sample(self) -> None:
        now = self.clock()
        self._node = _advance(self._node[0], now, node_counts(self.node))
        vhosts = vhost_counts(self.node)
        self._vhosts = {name: _step(self._vhosts, name, now, counts) for name, counts in vhosts.items()}
        for session in self.node.connections:
            for channel in session.channels.values():
                self._channels[channel] = _step(self._channels, channel, now, channel_counts(channel))

    def overview(self) -> dict[str, Any]:
        return message_stats(node_counts(self.node), self._node[1])

    def vhost(self, name: str) -> dict[str, Any]:
        counts = vhost_counts(self.node).get(name, NONE)
        return message_stats(counts, self._vhosts[name][1] if name in self._vhosts else NO_RATES)

    def channel(self, channel: ChannelSession) -> dict[str, Any]:
        sampled = self._channels.get(channel)
        return message_stats(channel_counts(channel), sampled[1] if sampled is not None else NO_RATES)


def _step(
    samples: MutableMapping[Any, tuple[Sample, tuple[float, ...]]], key: Hashable, now: float, counts: Counts
) -> tuple[Sample, tuple[float, ...]]:
    previous = samples.get(key)
    return _advance(previous[0] if previous is not None else (now, counts), now, counts)


def _advance(previous: Sample, now: float, counts: Counts) -> tuple[Sample, tuple[float, ...]]:
    then, before = previous
    elapsed = now - then
    if elapsed <= 0:
        return previous, NO_RATES
    return (now, counts), tuple((c - b) / elapsed for c, b in zip(counts, before, strict=True))


def message_stats(counts: Counts, rates: tuple[float, ...]) -> dict[str, Any]:
    """RabbitMQ's shape: {"publish": n, "publish_details": {"rate": r}, ...}, once anything has counted."""
    if not any(counts):
        return {}
    stats: dict[str, Any] = {}
    for name, count, rate in zip(STATS, counts, rates, strict=True):
        stats[name] = count
        stats[f"{name}_details"] = {"rate": round(rate, 1)}
    return stats


async def run_sampler(rates: MessageRates, interval: float = SAMPLE_INTERVAL) -> None:
    while True:
        await trio.sleep(interval)
        rates.sample()
