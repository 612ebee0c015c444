"""A virtual host: its exchanges, queues and bindings, with RabbitMQ's rules for changing them."""

from __future__ import annotations

import base64
import copy
import os
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, Protocol, cast

from leveret.amqp.constants import ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED, RESOURCE_LOCKED
from leveret.amqp.errors import ChannelError
from leveret.broker.cluster.hooks import LOCAL_METADATA, LocalMetadata
from leveret.broker.exchanges.base import Exchange
from leveret.broker.exchanges.erlang_terms import format_term
from leveret.broker.exchanges.registry import exchange_class
from leveret.broker.executor import Executor
from leveret.broker.message import Message
from leveret.broker.policies import Policy, VhostPolicies, effective_definition, queue_arguments
from leveret.broker.queues.arguments import (
    TYPE_ARGUMENTS,
    amqp_type,
    queue_type,
    validate_queue_arguments,
    validate_queue_properties,
)
from leveret.broker.queues.deadlines import Deadlines
from leveret.broker.queues.effects import Effect
from leveret.broker.queues.journal import NULL_JOURNAL, Journal
from leveret.broker.queues.lifecycle import Lifecycle, needs_lifecycle
from leveret.broker.queues.paging import NO_PAGER, Pager
from leveret.broker.queues.queue import Queue

DEFAULT_EXCHANGE = ""
RESERVED_PREFIX = "amq."

# The exchanges every vhost starts with, as RabbitMQ predeclares them.
PREDECLARED = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)

# Exchange-to-exchange routing deeper than this is a binding cycle; RabbitMQ stops at visited exchanges.
_MAX_ROUTING_HOPS = 64


class ProxyMaker(Protocol):
    def proxy(
        self, vhost: VirtualHost, name: str, *, durable: bool, auto_delete: bool, arguments: dict[str, Any]
    ) -> Queue | None:
        """The queue to hold for a new replicated queue that another node leads (None: a real one)."""


def check_not_default_exchange(name: str) -> None:
    """RabbitMQ refuses every declare (passive too), delete and binding of the default exchange."""
    if name == DEFAULT_EXCHANGE:
        raise ChannelError(ACCESS_REFUSED, "operation not permitted on the default exchange")


def _bool_text(value: object) -> str:
    return "true" if value else "false"


class VirtualHost:
    def __init__(
        self, name: str, clock: Callable[[], float] = time.monotonic, deadlines: Deadlines | None = None
    ) -> None:
        self.name = name
        # The node's clock and queue timers, for message TTL and queue expiry.
        self.clock = clock
        self.deadlines = deadlines or Deadlines()
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        # Set by the node when it has a store: the journal of a new durable queue, and the signal
        # that durable definitions (exchanges, queues, bindings) changed.
        self.journal_for: Callable[[str, str], Journal] | None = None
        self.definitions_changed: Callable[[], None] = lambda: None
        self.pager: Pager = NO_PAGER  # the node's, when it pages: queues count their memory against it
        # What carries out the effects of this vhost's queues' commands.
        self.executor = Executor(self)
        self.execute: Callable[[Queue, Effect], None] = self.executor.run
        # In a cluster, etcd's view of the definitions: declares, deletes and bindings ask it first.
        self.metadata: LocalMetadata = LOCAL_METADATA
        # In a cluster: makes the proxy of a replicated queue led elsewhere (broker/cluster/remote.py).
        self.proxies: ProxyMaker | None = None
        # RabbitMQ's vhost limits ("max-queues", "max-connections"); a negative value means no limit.
        self.limits: dict[str, int] = {}
        # RabbitMQ's vhost metadata, shown by the management API.
        self.description = ""
        self.tags: tuple[str, ...] = ()
        self.policies = VhostPolicies()
        self.exchanges[DEFAULT_EXCHANGE] = exchange_class("direct")(DEFAULT_EXCHANGE, durable=True)
        for name_, kind in PREDECLARED:
            self.exchanges[name_] = exchange_class(kind)(name_, durable=True)

    # ---- lookups ----------------------------------------------------------------------------

    def exchange(self, name: str, *, local: bool = False) -> Exchange:
        """The exchange, or 404. Missing here, the cluster may know it already (unless `local`: a publish
        never waits for etcd)."""
        exchange = self.exchanges.get(name)
        if exchange is None and not local:
            self.metadata.looking_up(self, "exchange", name)
            exchange = self.exchanges.get(name)
        if exchange is None:
            raise ChannelError(NOT_FOUND, f"no exchange '{name}' in vhost '{self.name}'")
        return exchange

    def queue(self, name: str) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            self.metadata.looking_up(self, "queue", name)
            queue = self.queues.get(name)
        if queue is None:
            raise ChannelError(NOT_FOUND, f"no queue '{name}' in vhost '{self.name}'")
        return queue

    # ---- exchanges --------------------------------------------------------------------------

    def declare_exchange(
        self,
        name: str,
        kind: str,
        *,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> Exchange:
        check_not_default_exchange(name)
        existing = self.exchanges.get(name)
        if name.startswith(RESERVED_PREFIX) and existing is None:
            raise ChannelError(ACCESS_REFUSED, f"exchange name '{name}' contains reserved prefix 'amq.*'")
        cls = exchange_class(kind)
        if self.metadata is not LOCAL_METADATA and name not in _PREDECLARED_NAMES:
            self.metadata.declaring_exchange(
                self,
                name,
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
                _valid(cls.validate_arguments, arguments),
            )
            existing = self.exchanges.get(name)  # the cluster's record, when it has one
        if existing is not None:
            self._check_exchange_equivalent(existing, kind, durable, auto_delete, internal, arguments)
            return existing
        cls.validate_arguments(arguments)
        exchange = cls(name, durable=durable, auto_delete=auto_delete, internal=internal, arguments=arguments)
        self.exchanges[name] = exchange
        if self.policies:
            self._apply_exchange_policies(exchange)
        if durable:
            self.definitions_changed()
        return exchange

    def _check_exchange_equivalent(
        self, exchange: Exchange, kind: str, durable: bool, auto_delete: bool, internal: bool, arguments: dict
    ) -> None:
        where = f"for exchange '{exchange.name}' in vhost '{self.name}'"
        for field, current, received in (
            ("type", exchange.kind, kind),
            ("durable", exchange.durable, durable),
            ("auto_delete", exchange.auto_delete, auto_delete),
            ("internal", exchange.internal, internal),
        ):
            if current != received:
                shown = (lambda v: v) if field == "type" else _bool_text
                raise ChannelError(
                    PRECONDITION_FAILED,
                    f"inequivalent arg '{field}' {where}: received '{shown(received)}' but current is "
                    f"'{shown(current)}'",
                )
        _check_arguments_equivalent(where, exchange.arguments, arguments, keys=("alternate-exchange",))

    def delete_exchange(self, name: str, *, if_unused: bool) -> None:
        check_not_default_exchange(name)
        if name.startswith(RESERVED_PREFIX) and name in self.exchanges:
            raise ChannelError(
                ACCESS_REFUSED, f"deletion of system exchange '{name}' in vhost '{self.name}' not allowed"
            )
        exchange = self.exchanges.get(name)
        if exchange is None:
            return  # RabbitMQ: deleting a missing exchange succeeds
        if if_unused and exchange.has_bindings():
            raise ChannelError(PRECONDITION_FAILED, f"exchange '{name}' in vhost '{self.name}' in use")
        self.metadata.deleting_exchange(self, name)
        self.remove_exchange(exchange)

    def remove_exchange(self, exchange: Exchange) -> None:
        """Delete `exchange` and every binding to it."""
        if self.exchanges.get(exchange.name) is not exchange:
            return
        self.metadata.removed(self, exchange)
        del self.exchanges[exchange.name]
        for other in list(self.exchanges.values()):
            self._unbind_all(other, exchange)
        if exchange.durable:
            self.definitions_changed()

    # ---- queues -----------------------------------------------------------------------------

    def declare_queue(
        self,
        name: str,
        *,
        owner: object,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
        server_named: bool = False,
        restoring: bool = False,
    ) -> Queue:
        """Declare a queue; an empty name gets a server-chosen `amq.gen-...` one, as does a name from
        `server_named_queue()` (`server_named`: exempt from the reserved prefix).

        As in RabbitMQ, an exclusive queue is never durable, and exclusivity is not an equivalence argument:
        a redeclare must come from the queue's owner with exclusive set, or, for a queue no connection owns,
        without it (anything else is 405 RESOURCE_LOCKED, checked first). Then durable, auto_delete and the
        queue type's arguments must match (406). A new quorum or stream queue must be durable, shared and
        kept (406), unless `restoring` one that exists already (the definitions file, a cluster record)."""
        durable = durable and not exclusive
        clustered = self.metadata is not LOCAL_METADATA
        if not name and clustered:
            # In a cluster the name is chosen first and stored like any other (the same one when the
            # declare is handled again once etcd has it).
            name, server_named = self.metadata.server_name() or server_named_queue(), True
        existing = self.queues.get(name)
        # Other amq. names are refused below; an exclusive queue here already answers for itself.
        stored_name = bool(name) and (not name.startswith(RESERVED_PREFIX) or server_named)
        if clustered and stored_name and not (existing and existing.exclusive):
            flags = {"durable": durable, "exclusive": exclusive, "auto_delete": auto_delete}
            valid = _valid(validate_queue_arguments, name, self.name, arguments) and (
                restoring or _valid(lambda: validate_queue_properties(name, self.name, arguments, **flags))
            )
            self.metadata.declaring_queue(self, name, durable, exclusive, auto_delete, arguments, valid)
            existing = self.queues.get(name)  # the cluster's record, when it has one
        if existing is not None:
            if existing.exclusive_owner is not (owner if exclusive else None):
                raise self._locked(existing)
            self._check_queue_equivalent(existing, durable, auto_delete, arguments)
            return existing
        if not name:
            name = server_named_queue()
        elif name.startswith(RESERVED_PREFIX) and not server_named:
            raise ChannelError(ACCESS_REFUSED, f"queue name '{name}' contains reserved prefix 'amq.*'")
        validate_queue_arguments(name, self.name, arguments)
        self._check_queue_limit(name)
        if not restoring:
            validate_queue_properties(
                name, self.name, arguments, durable=durable, exclusive=exclusive, auto_delete=auto_delete
            )
        # Exclusive queues die with their connection, so they never outlive a restart either.
        stored = durable and not exclusive and self.journal_for is not None
        queue: Queue | None = None
        if self.proxies is not None and durable and not exclusive:
            queue = self.proxies.proxy(
                self, name, durable=durable, auto_delete=auto_delete, arguments=arguments
            )
        if queue is None:
            queue = self.make_queue(
                name, durable=durable, auto_delete=auto_delete, arguments=arguments,
                exclusive_owner=owner if exclusive else None,
            )
        self.queues[name] = queue
        if stored:
            self.definitions_changed()
        # Every queue is bound to the default exchange under its own name.
        self.exchanges[DEFAULT_EXCHANGE].bind(queue, name, {})
        return queue

    def make_queue(
        self,
        name: str,
        *,
        durable: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
        exclusive_owner: object | None = None,
    ) -> Queue:
        """A new queue of this vhost (not yet in its table): with its journal when durable and stored."""
        stored = durable and exclusive_owner is None and self.journal_for is not None
        queue = Queue(
            name,
            self.name,
            durable=durable,
            exclusive_owner=exclusive_owner,
            auto_delete=auto_delete,
            arguments=arguments,
            journal=self.journal_for(self.name, name) if stored and self.journal_for else NULL_JOURNAL,
            host=self,
        )
        if self.policies:
            self._apply_queue_policies(queue)
        if queue.lifecycle is None and needs_lifecycle(queue.effective_arguments):
            Lifecycle(queue)
        return queue

    def _check_queue_limit(self, name: str) -> None:
        limit = self.limits.get("max-queues")
        if limit is not None and 0 <= limit <= len(self.queues):
            raise ChannelError(
                PRECONDITION_FAILED,
                f"cannot declare queue '{name}': queue limit in vhost '{self.name}' ({limit}) is reached",
            )

    def check_exclusive_access(self, queue: Queue, owner: object) -> None:
        """Any connection may use a queue no connection owns; an exclusive one only its owner."""
        if queue.exclusive_owner is not None and queue.exclusive_owner is not owner:
            raise self._locked(queue)

    def _locked(self, queue: Queue) -> ChannelError:
        return ChannelError(
            RESOURCE_LOCKED,
            f"cannot obtain exclusive access to locked queue '{queue.name}' in vhost '{self.name}'. "
            "It could be originally declared on another connection or the exclusive property value "
            "does not match that of the original declaration.",
        )

    def _check_queue_equivalent(
        self, queue: Queue, durable: bool, auto_delete: bool, arguments: dict
    ) -> None:
        where = f"for queue '{queue.name}' in vhost '{self.name}'"
        for field, current, received in (
            ("durable", queue.durable, durable),
            ("auto_delete", queue.auto_delete, auto_delete),
        ):
            if current != received:
                raise ChannelError(
                    PRECONDITION_FAILED,
                    f"inequivalent arg '{field}' {where}: received '{_bool_text(received)}' but current is "
                    f"'{_bool_text(current)}'",
                )
        keys = TYPE_ARGUMENTS[queue_type(queue.arguments)]
        _check_arguments_equivalent(where, queue.arguments, arguments, keys=keys)

    def delete_queue(self, queue: Queue, *, if_unused: bool = False, if_empty: bool = False) -> int:
        if if_unused and queue.consumers:
            raise ChannelError(PRECONDITION_FAILED, f"queue '{queue.name}' in vhost '{self.name}' in use")
        if if_empty and queue.message_count:
            raise ChannelError(PRECONDITION_FAILED, f"queue '{queue.name}' in vhost '{self.name}' not empty")
        count = queue.message_count
        if not queue.exclusive:
            self.metadata.deleting_queue(self, queue.name)
        self.remove_queue(queue)
        return count

    def remove_queue(self, queue: Queue) -> None:
        """Delete `queue`: unbind it everywhere and cancel its consumers."""
        if self.queues.get(queue.name) is not queue:
            return
        self.metadata.removed(self, queue)
        del self.queues[queue.name]
        queue.delete()
        if queue.durable:
            self.definitions_changed()
        for exchange in list(self.exchanges.values()):
            self._unbind_all(exchange, queue)
        for consumer in list(queue.consumers):
            consumer.cancelled_by_broker()
        queue.consumers.clear()

    def add_lifecycle(self, queue: Queue) -> None:
        Lifecycle(queue)

    # ---- policies (broker/policies.py) --------------------------------------------------------

    def set_policy(self, policy: Policy, *, operator: bool) -> None:
        """Add or replace a policy; every queue and exchange follows what applies to it now."""
        self.policies.of_kind(operator)[policy.name] = policy
        self.apply_policies()

    def clear_policy(self, name: str, *, operator: bool) -> bool:
        if self.policies.of_kind(operator).pop(name, None) is None:
            return False
        self.apply_policies()
        return True

    def apply_policies(self) -> None:
        for queue in list(self.queues.values()):
            self._apply_queue_policies(queue)
        for exchange in self.exchanges.values():
            if exchange.name != DEFAULT_EXCHANGE:
                self._apply_exchange_policies(exchange)

    def apply_queue_policies(self, queue: Queue) -> None:
        """A queue made outside `declare_queue` (a cluster's leader built from its replica) follows the
        vhost's policies as a declared one does."""
        if self.policies:
            self._apply_queue_policies(queue)

    def _apply_queue_policies(self, queue: Queue) -> None:
        """Give the queue what its policies say; a live queue's lifecycle follows at once."""
        queue.policy, queue.operator_policy = self.policies.matching("queues", queue.name)
        definition = effective_definition(queue.policy, queue.operator_policy)
        effective = queue_arguments(queue.arguments, definition)
        if effective == queue.effective_arguments:
            return
        if queue.lifecycle is None and needs_lifecycle(effective) and not queue.deleted:
            # Made under the old arguments: the messages there already keep no TTL, as in RabbitMQ.
            Lifecycle(queue)
        queue.effective_arguments = effective
        if queue.lifecycle is not None:
            queue.lifecycle.settings_changed()

    def _apply_exchange_policies(self, exchange: Exchange) -> None:
        exchange.policy, exchange.operator_policy = self.policies.matching("exchanges", exchange.name)
        exchange.policy_definition = effective_definition(exchange.policy, exchange.operator_policy)

    # ---- bindings ---------------------------------------------------------------------------

    def bind(
        self, source: Exchange, destination: Queue | Exchange, routing_key: str, arguments: dict
    ) -> None:
        if self.metadata is not LOCAL_METADATA:
            source.validate_binding(routing_key, arguments)  # before the cluster stores it
            self.metadata.binding(self, source, destination, routing_key, arguments, True)
        if source.bind(destination, routing_key, arguments) and _durable_binding(source, destination):
            self.definitions_changed()

    def unbind(
        self, source: Exchange, destination: Queue | Exchange, routing_key: str, arguments: dict
    ) -> None:
        self.metadata.binding(self, source, destination, routing_key, arguments, False)
        if source.unbind(destination, routing_key, arguments):
            if _durable_binding(source, destination):
                self.definitions_changed()
            self._auto_delete_if_unbound(source)

    def _unbind_all(self, exchange: Exchange, destination: Queue | Exchange) -> None:
        if any(b.destination is destination for b in exchange.bindings):
            exchange.unbind_destination(destination)
            self._auto_delete_if_unbound(exchange)

    def _auto_delete_if_unbound(self, exchange: Exchange) -> None:
        if (
            exchange.auto_delete
            and not exchange.has_bindings()
            and self.exchanges.get(exchange.name) is exchange
        ):
            self.remove_exchange(exchange)

    # ---- routing ----------------------------------------------------------------------------

    def route(self, exchange: Exchange, message: Message, extra_keys: Iterable[str] = ()) -> list[Queue]:
        """The queues `message` goes to, each once, following exchange-to-exchange bindings and
        alternate exchanges; `extra_keys` (CC/BCC) route it as its routing key would."""
        if extra_keys:
            return self._route_with_keys(exchange, message, extra_keys)
        if exchange.name == DEFAULT_EXCHANGE:
            # The hot case: one queue named by the routing key, no bindings to walk.
            queue = self.queues.get(message.routing_key)
            return [queue] if queue is not None else []
        queues: list[Queue] = []
        seen_queues: set[int] = set()
        visited: set[int] = set()
        self._route_into(exchange, message, queues, seen_queues, visited, 0)
        return queues

    def _route_with_keys(
        self, exchange: Exchange, message: Message, extra_keys: Iterable[str]
    ) -> list[Queue]:
        queues: list[Queue] = []
        seen: set[int] = set()
        for key in (message.routing_key, *extra_keys):
            keyed = copy.copy(message)
            keyed.routing_key = key
            for queue in self.route(exchange, keyed):
                if id(queue) not in seen:
                    seen.add(id(queue))
                    queues.append(queue)
        return queues

    def _route_into(
        self,
        exchange: Exchange,
        message: Message,
        queues: list[Queue],
        seen_queues: set[int],
        visited: set[int],
        depth: int,
    ) -> None:
        if id(exchange) in visited or depth > _MAX_ROUTING_HOPS:
            return
        visited.add(id(exchange))
        matched = False
        for destination in exchange.route(message):
            matched = True
            if isinstance(destination, Queue):
                if id(destination) not in seen_queues:
                    seen_queues.add(id(destination))
                    queues.append(destination)
            else:
                downstream = cast(Exchange, destination)
                self._route_into(downstream, message, queues, seen_queues, visited, depth + 1)
        if not matched:
            alternate = self._alternate_exchange(exchange)
            if alternate is not None:
                self._route_into(alternate, message, queues, seen_queues, visited, depth + 1)

    def _alternate_exchange(self, exchange: Exchange) -> Exchange | None:
        # The exchange's own argument wins over a policy's, as in RabbitMQ.
        name = exchange.arguments.get("alternate-exchange") or exchange.policy_definition.get(
            "alternate-exchange"
        )
        return self.exchanges.get(name) if isinstance(name, str) else None

    def exclusive_queues_of(self, owner: object) -> Iterable[Queue]:
        return [q for q in self.queues.values() if q.exclusive_owner is owner]


_PREDECLARED_NAMES = frozenset((DEFAULT_EXCHANGE, *(name for name, _ in PREDECLARED)))


def _valid(validate: Callable[..., object], *arguments: object) -> bool:
    """Whether `validate` accepts `arguments` (it raises ChannelError when it does not)."""
    try:
        validate(*arguments)
    except ChannelError:
        return False
    return True


def _durable_binding(source: Exchange, destination: Queue | Exchange) -> bool:
    """RabbitMQ keeps a binding across restarts when both of its ends are durable."""
    return source.durable and destination.durable


def _check_arguments_equivalent(where: str, current: dict, received: dict, keys: Iterable[str]) -> None:
    """RabbitMQ's rabbit_misc:assert_args_equivalence over `keys`, in their order: the first difference is
    406. Values of the same type class (any integer width) compare by value; a classic queue's missing
    x-queue-type equals 'classic'."""
    for key in keys:
        have, got = current.get(key), received.get(key)
        if have is None and got is None:
            continue
        if have is not None and got is not None:
            if _type_class(have) == _type_class(got) and have == got:
                continue
            got_text, have_text = _bare_value(got), _bare_value(have)
        elif key == "x-queue-type" and (have or got) == "classic":
            continue
        else:
            got_text, have_text = _typed_value(got), _typed_value(have)
        raise ChannelError(
            PRECONDITION_FAILED,
            f"inequivalent arg '{key}' {where}: received {got_text} but current is {have_text}",
        )


def _type_class(value: object) -> str:
    """rabbit_misc:type_class: every integer type (decimal too) is one class, as are float and double."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | Decimal):
        return "int"
    if isinstance(value, str | bytes):
        return "longstr"
    return type(value).__name__


def _bare_value(value: object) -> str:
    """RabbitMQ's val/1 of a value without its type: a string as it is, anything else as Erlang's ~tp."""
    if isinstance(value, str):
        return f"'{value}'"
    return f"'{format_term(value)}'"


def _typed_value(value: object) -> str:
    if value is None:
        return "none"
    shown = value if isinstance(value, str) else format_term(value)
    return f"the value '{shown}' of type '{amqp_type(value)}'"


def server_named_queue() -> str:
    return "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
