"""Message rates for message_stats: the node's, each vhost's, channel's, queue's and exchange's counts
(broker/stats.py), sampled every few seconds; a rate is the change over the last interval, per second, as
RabbitMQ's `*_details.rate`. Queues and exchanges are sampled as the API reads them (there may be many).
Samples of queues, exchanges and channels are kept by weak reference: one gone takes its sample with it."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

import trio

from leveret.broker.stats import (
    EXCHANGE_STATS,
    NONE,
    QUEUE_STATS,
    STATS,
    Counts,
    added,
    channel_counts,
    exchange_counts,
    queue_counts,
)

if TYPE_CHECKING:
    from leveret.broker.exchanges.base import Exchange
    from leveret.broker.node import Node
    from leveret.broker.queues.queue import Queue
    from leveret.broker.session.channel import ChannelSession

# RabbitMQ's collect_statistics_interval is 5 s.
SAMPLE_INTERVAL = 5.0
Rates = tuple[float, ...]
Sample = tuple[float, Counts]
Sampled = tuple[Sample, Rates]


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


class _PerObject:
    """The last sample and rates of each live object of one kind, taken by the timer (`sample`)."""

    def __init__(self, counts: Callable[[Any], Counts], names: tuple[str, ...]) -> None:
        self.counts = counts
        self.names = names
        self.samples: weakref.WeakKeyDictionary[Any, Sampled] = weakref.WeakKeyDictionary()

    def sample(self, objects: Iterable[Any], now: float) -> None:
        for item in objects:
            self.samples[item] = _step(self.samples, item, now, self.counts(item))

    def stats(self, item: Any) -> dict[str, Any]:
        sampled = self.samples.get(item)
        counts = self.counts(item)
        return message_stats(counts, sampled[1] if sampled is not None else _no_rates(counts), self.names)


class _SampledWhenRead(_PerObject):
    """Queues and exchanges, which may be many: sampled when the API reads them, not by the timer (that
    would walk every queue every 5 s). A rate is the change between the reading and the last sample taken
    at least an interval before it; the first reading of an object shows 0."""

    def __init__(
        self, counts: Callable[[Any], Counts], names: tuple[str, ...], clock: Callable[[], float]
    ) -> None:
        super().__init__(counts, names)
        self.clock = clock

    def stats(self, item: Any) -> dict[str, Any]:
        now, counts = self.clock(), self.counts(item)
        sampled = self.samples.get(item)
        if sampled is None:
            sampled = self.samples[item] = ((now, counts), _no_rates(counts))
        elif now - sampled[0][0] >= SAMPLE_INTERVAL:
            sampled = self.samples[item] = _advance(sampled[0], now, counts)
        return message_stats(counts, sampled[1], self.names)


class MessageRates:
    def __init__(self, node: Node, clock: Callable[[], float]) -> None:
        self.node = node
        self.clock = clock
        start = clock()
        counts = node_counts(node)
        self._node: Sampled = ((start, counts), _no_rates(counts))
        self._vhosts: dict[str, Sampled] = {
            name: ((start, counts), _no_rates(counts)) for name, counts in vhost_counts(node).items()
        }
        self._channels = _PerObject(channel_counts, STATS)
        self._queues = _SampledWhenRead(queue_counts, QUEUE_STATS, clock)
        self._exchanges = _SampledWhenRead(exchange_counts, EXCHANGE_STATS, clock)

    def sample(self) -> None:
        now = self.clock()
        self._node = _advance(self._node[0], now, node_counts(self.node))
        vhosts = vhost_counts(self.node)
        self._vhosts = {name: _step(self._vhosts, name, now, counts) for name, counts in vhosts.items()}
        self._channels.sample(
            (channel for session in self.node.connections for channel in session.channels.values()), now
        )

    def overview(self) -> dict[str, Any]:
        counts = node_counts(self.node)
        return message_stats(counts, self._node[1], STATS)

    def vhost(self, name: str) -> dict[str, Any]:
        counts = vhost_counts(self.node).get(name, NONE)
        return message_stats(
            counts, self._vhosts[name][1] if name in self._vhosts else _no_rates(counts), STATS
        )

    def channel(self, channel: ChannelSession) -> dict[str, Any]:
        return self._channels.stats(channel)

    def queue(self, queue: Queue) -> dict[str, Any]:
        return self._queues.stats(queue)

    def exchange(self, exchange: Exchange) -> dict[str, Any]:
        return self._exchanges.stats(exchange)


def _no_rates(counts: Counts) -> Rates:
    return (0.0,) * len(counts)


def _step(samples: MutableMapping[Any, Sampled], key: Hashable, now: float, counts: Counts) -> Sampled:
    previous = samples.get(key)
    return _advance(previous[0] if previous is not None else (now, counts), now, counts)


def _advance(previous: Sample, now: float, counts: Counts) -> Sampled:
    then, before = previous
    elapsed = now - then
    if elapsed <= 0:
        return previous, _no_rates(counts)
    return (now, counts), tuple((c - b) / elapsed for c, b in zip(counts, before, strict=True))


def message_stats(counts: Counts, rates: Rates, names: tuple[str, ...]) -> dict[str, Any]:
    """RabbitMQ's shape: {"publish": n, "publish_details": {"rate": r}, ...}, once anything has counted."""
    if not any(counts):
        return {}
    stats: dict[str, Any] = {}
    for name, count, rate in zip(names, counts, rates, strict=True):
        stats[name] = count
        stats[f"{name}_details"] = {"rate": round(rate, 1)}
    return stats


async def run_sampler(rates: MessageRates, interval: float = SAMPLE_INTERVAL) -> None:
    while True:
        await trio.sleep(interval)
        rates.sample()
