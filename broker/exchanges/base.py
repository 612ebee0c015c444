"""What every exchange type provides: bindings in, destinations out.

An exchange knows nothing of queues: a destination is any named object (a queue or another
exchange, compared by identity). The vhost's router follows exchange-to-exchange bindings and
de-duplicates the final set of queues; an exchange only answers "which destinations does this
message go to".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from leveret.broker.message import Message


class Destination(Protocol):
    """A queue or an exchange, as far as bindings and the definitions file need to know."""

    @property
    def name(self) -> str: ...

    @property
    def durable(self) -> bool: ...


@dataclass(frozen=True, eq=False)
class Binding:
    destination: Destination
    routing_key: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def same_as(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> bool:
        return (
            self.destination is destination
            and self.routing_key == routing_key
            and self.arguments == arguments
        )


class Exchange:
    """Base of every exchange type. Subclasses override `route` and, when they index bindings,
    `_added` / `_removed`."""

    kind: ClassVar[str]

    def __init__(
        self,
        name: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = dict(arguments or {})
        # The policy and operator policy that apply (broker/policies.Policy), and their merged definition.
        self.policy: Any = None
        self.operator_policy: Any = None
        self.policy_definition: dict[str, Any] = {}
        # message_stats (broker/stats.py, exchange_counts), counted by the channels that publish here:
        # publishes in, those routed by the vhost and the copies that reached queues, and those the default
        # exchange's inlined route sent nowhere.
        self.published_in = 0
        self.routed_in = 0
        self.routed_out = 0
        self.missed_inline = 0
        # In bind order: the consistent-hash ring and the definitions store rely on that order.
        self.bindings: list[Binding] = []

    @classmethod
    def validate_arguments(cls, arguments: dict[str, Any]) -> None:
        """Raise ChannelError(406, ...) for arguments this type rejects at declare time."""

    def validate_binding(self, routing_key: str, arguments: dict[str, Any]) -> None:
        """Raise ChannelError(406, ...) for a binding this type rejects."""

    def bind(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> bool:
        """Add a binding; False when an identical one exists (binding again is a no-op)."""
        self.validate_binding(routing_key, arguments)
        if any(b.same_as(destination, routing_key, arguments) for b in self.bindings):
            return False
        binding = Binding(destination, routing_key, dict(arguments))
        self.bindings.append(binding)
        self._added(binding)
        return True

    def unbind(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> bool:
        """Remove a binding; False when there was none such."""
        for i, b in enumerate(self.bindings):
            if b.same_as(destination, routing_key, arguments):
                del self.bindings[i]
                self._removed(b)
                return True
        return False

    def unbind_destination(self, destination: Destination) -> None:
        """Drop every binding to `destination` (it was deleted)."""
        for b in [b for b in self.bindings if b.destination is destination]:
            self.bindings.remove(b)
            self._removed(b)

    def replace_destination(self, old: Destination, new: Destination) -> None:
        """Bindings to `old` go to `new` instead, in their places (the consistent-hash ring's order holds):
        a queue's leadership moved, and its proxy and real queue swap."""
        if not any(b.destination is old for b in self.bindings):
            return
        bindings = self.bindings
        self.bindings = []
        for binding in reversed(bindings):
            self._removed(binding)
        for binding in bindings:
            if binding.destination is old:
                binding = Binding(new, binding.routing_key, binding.arguments)
            self.bindings.append(binding)
            self._added(binding)

    def has_bindings(self) -> bool:
        return bool(self.bindings)

    def route(self, message: Message) -> Iterable[Destination]:
        raise NotImplementedError

    def _added(self, binding: Binding) -> None:
        """Hook: index a new binding."""

    def _removed(self, binding: Binding) -> None:
        """Hook: forget a removed binding."""
