"""An ordered, counted set of destinations: what direct, fanout and topic keep per binding key."""

from __future__ import annotations

from collections.abc import Iterator

from .base import Destination


class DestinationSet:
    """Destinations in first-bound order.

    Counts bindings per destination: the same queue may be bound twice under one key (different
    arguments), and unbinding one of them must keep it. `snapshot()` caches the routing result as a
    tuple, rebuilt only after a change, so routing allocates nothing.
    """

    __slots__ = ("_counts", "_snapshot")

    def __init__(self) -> None:
        self._counts: dict[Destination, int] = {}
        self._snapshot: tuple[Destination, ...] | None = None

    def add(self, destination: Destination) -> None:
        self._counts[destination] = self._counts.get(destination, 0) + 1
        self._snapshot = None

    def remove(self, destination: Destination) -> None:
        left = self._counts[destination] - 1
        if left:
            self._counts[destination] = left
        else:
            del self._counts[destination]
        self._snapshot = None

    def snapshot(self) -> tuple[Destination, ...]:
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._snapshot = tuple(self._counts)
        return snapshot

    def __iter__(self) -> Iterator[Destination]:
        return iter(self._counts)

    def __bool__(self) -> bool:
        return bool(self._counts)
