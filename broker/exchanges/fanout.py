"""Fanout exchange: a message goes to every bound destination; keys and arguments are ignored."""

from __future__ import annotations

from typing import Any, ClassVar

from leveret.broker.message import Message

from .base import Binding, Destination, Exchange
from .destinations import DestinationSet


class FanoutExchange(Exchange):
    kind: ClassVar[str] = "fanout"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._destinations = DestinationSet()

    def route(self, message: Message) -> tuple[Destination, ...]:
        return self._destinations.snapshot()

    def _added(self, binding: Binding) -> None:
        self._destinations.add(binding.destination)

    def _removed(self, binding: Binding) -> None:
        self._destinations.remove(binding.destination)
