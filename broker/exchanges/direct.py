"""Direct exchange: a message goes to every destination bound with exactly its routing key."""

from __future__ import annotations

from typing import Any, ClassVar

from leveret.broker.message import Message

from .base import Binding, Destination, Exchange
from .destinations import DestinationSet


class DirectExchange(Exchange):
    kind: ClassVar[str] = "direct"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._by_key: dict[str, DestinationSet] = {}

    def route(self, message: Message) -> tuple[Destination, ...]:
        destinations = self._by_key.get(message.routing_key)
        return destinations.snapshot() if destinations is not None else ()

    def _added(self, binding: Binding) -> None:
        destinations = self._by_key.get(binding.routing_key)
        if destinations is None:
            destinations = self._by_key[binding.routing_key] = DestinationSet()
        destinations.add(binding.destination)

    def _removed(self, binding: Binding) -> None:
        destinations = self._by_key[binding.routing_key]
        destinations.remove(binding.destination)
        if not destinations:
            del self._by_key[binding.routing_key]
