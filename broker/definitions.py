"""RabbitMQ's definitions format (a JSON export of users, vhosts, permissions, limits, exchanges, queues
and bindings): exporting the node's, and importing a file, as /api/definitions and `load_definitions` do.

An import makes each object with the node's own operations (broker/admin.py, the vhost's declare and
bind), so it is validated as the same change over AMQP or HTTP would be. As RabbitMQ's import does, it
leaves existing exchanges and queues as they are and skips bindings whose ends do not exist. Policies are
imported before exchanges and queues, so those follow them from the start. Leveret has no runtime parameters
other than vhost limits: others are skipped, with a warning. Operator policies are not part of the format
(RabbitMQ 3.10 does not export them either).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leveret import __version__
from leveret.amqp.errors import AMQPError
from leveret.broker.admin import AdminError
from leveret.broker.queues.queue import Queue
from leveret.broker.store import DefinitionsError
from leveret.broker.vhost import DEFAULT_EXCHANGE, PREDECLARED, VirtualHost
from leveret.config import hash_password
from leveret.config.passwords import SHA256

if TYPE_CHECKING:
    from leveret.broker.node import Node

log = logging.getLogger(__name__)

_PREDECLARED_NAMES = {DEFAULT_EXCHANGE, *(name for name, _ in PREDECLARED)}
VHOST_LIMITS_COMPONENT = "vhost-limits"


class ImportRefused(AdminError):
    """An import that cannot be applied; `reason` is RabbitMQ's (a text, or a JSON list)."""


def read_definitions_file(path: str) -> Any:
    """The configuration's load_definitions file, parsed (blocking): read before the store is opened, so that
    an unreadable file stops the start before it touches anything."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DefinitionsError(f"load_definitions file {path} cannot be used: {exc}") from None


def load_definitions_file(node: Node, path: str, definitions: Any = None, *, declare: bool = True) -> None:
    """Import the load_definitions file at start, as RabbitMQ does at each boot (`definitions`: the file
    as read_definitions_file read it). One that cannot be applied stops the start, naming the file and why.
    Without `declare`, only its users, vhosts, permissions, limits and policies (a cluster node declares
    the rest through etcd once it has joined: see declare_loaded_definitions)."""
    if definitions is None:
        definitions = read_definitions_file(path)
    try:
        if declare:
            import_definitions(node, definitions)
        else:
            import_access(node, definitions)
    except AdminError as exc:
        raise DefinitionsError(f"load_definitions file {path} cannot be imported: {exc.reason}") from None
    except AMQPError as exc:
        raise DefinitionsError(f"load_definitions file {path} cannot be imported: {exc.text}") from None


def json_value(value: Any) -> Any:
    """An AMQP table value as JSON: bytes as text (else base64), decimals numbers, timestamps in seconds."""
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    return value


# ---- export ------------------------------------------------------------------------------------------


def export_vhost_objects(vhost: VirtualHost, *, with_vhost: bool) -> dict[str, list[dict[str, Any]]]:
    """A vhost's limits, exchanges, queues and bindings; `with_vhost`: each item names its vhost (a whole
    node's export) or not (one vhost's)."""
    named = {"vhost": vhost.name} if with_vhost else {}
    exchanges = [
        {
            "name": x.name,
            **named,
            "type": x.kind,
            "durable": x.durable,
            "auto_delete": x.auto_delete,
            "internal": x.internal,
            "arguments": json_value(x.arguments),
        }
        for x in vhost.exchanges.values()
        if x.name not in _PREDECLARED_NAMES
    ]
    queues = [
        {
            "name": q.name,
            **named,
            "durable": q.durable,
            "auto_delete": q.auto_delete,
            "arguments": json_value(q.arguments),
        }
        for q in vhost.queues.values()
        if not q.exclusive
    ]
    bindings = []
    for x in vhost.exchanges.values():
        if x.name == DEFAULT_EXCHANGE:
            continue
        for b in x.bindings:
            if isinstance(b.destination, Queue) and b.destination.exclusive:
                continue
            bindings.append(
                {
                    "source": x.name,
                    **named,
                    "destination": b.destination.name,
                    "destination_type": "queue" if isinstance(b.destination, Queue) else "exchange",
                    "routing_key": b.routing_key,
                    "arguments": json_value(b.arguments),
                }
            )
    parameters = []
    if vhost.limits:
        parameters.append(
            {
                "value": dict(vhost.limits),
                "vhost": vhost.name,
                "component": VHOST_LIMITS_COMPONENT,
                "name": "limits",
            }
        )
    # RabbitMQ names the vhost of each policy even in a vhost's export.
    policies = [policy.record() for _, policy in sorted(vhost.policies.policies.items())]
    return {
        "parameters": parameters,
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }


def export_node(node: Node, version: str) -> dict[str, Any]:
    """The whole node in RabbitMQ's format; `version` is the RabbitMQ version Leveret behaves as."""
    authority = node.authority
    objects: dict[str, list[dict[str, Any]]] = {
        "parameters": [],
        "policies": [],
        "queues": [],
        "exchanges": [],
        "bindings": [],
    }
    for name in sorted(node.vhosts):
        for key, items in export_vhost_objects(node.vhosts[name], with_vhost=True).items():
            objects[key].extend(items)
    return {
        "rabbit_version": version,
        "rabbitmq_version": version,
        "product_name": "Leveret",
        "product_version": __version__,
        "users": [
            {
                "name": u.name,
                "password_hash": u.password_hash,
                "hashing_algorithm": u.hashing_algorithm,
                "tags": list(u.tags),
                "limits": dict(node.admin.user_limits.get(u.name, {})),
            }
            for u in sorted(authority.users.values(), key=lambda u: u.name)
        ],
        "vhosts": [{"name": name} for name in sorted(node.vhosts)],
        "permissions": [
            {
                "user": user,
                "vhost": vhost,
                "configure": p.configure.pattern,
                "write": p.write.pattern,
                "read": p.read.pattern,
            }
            for (user, vhost), p in sorted(authority.permissions.items())
        ],
        "topic_permissions": [
            {"user": t.user, "vhost": t.vhost, "exchange": t.exchange, "write": t.write, "read": t.read}
            for t in sorted(authority.topic_permissions, key=lambda t: (t.user, t.vhost, t.exchange))
        ],
        "parameters": objects["parameters"],
        "global_parameters": [],
        "policies": objects["policies"],
        "queues": objects["queues"],
        "exchanges": objects["exchanges"],
        "bindings": objects["bindings"],
    }


def export_vhost(vhost: VirtualHost, version: str) -> dict[str, Any]:
    return {"rabbit_version": version, **export_vhost_objects(vhost, with_vhost=False)}


# ---- import ------------------------------------------------------------------------------------------


def _items(definitions: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = definitions.get(key) or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ImportRefused(["invalid_definitions", key])
    return items


def _field(item: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = item.get(key, default)
    if value is None and default is None:
        raise ImportRefused(["key_missing", key])
    if kind is bool and value in ("true", "false"):
        value = value == "true"
    if not isinstance(value, kind) or kind is not bool and isinstance(value, bool):
        raise ImportRefused([f"not_{kind.__name__}", key, value])
    return value


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise ImportRefused(["invalid_tags", value])
    return tuple(tag.strip() for tag in value if tag.strip())


def import_definitions(node: Node, definitions: Any, only_vhost: str | None = None) -> None:
    """Apply a definitions document. With `only_vhost` (an import into one vhost) the document's objects
    go to that vhost whatever they name, and users, vhosts and permissions are not read. Raises
    ImportRefused, or the AMQPError of a declaration the vhost refuses."""
    import_access(node, definitions, only_vhost)
    for declaration in declarations(node, definitions, only_vhost):
        declaration()


def import_access(node: Node, definitions: Any, only_vhost: str | None = None) -> None:
    """The document's users, vhosts, permissions, limits and policies (in a cluster: one change to etcd)."""
    if not isinstance(definitions, dict):
        raise ImportRefused("not_json")
    admin = node.admin
    if only_vhost is None:
        for item in _items(definitions, "users"):
            name = _field(item, "name", str)
            if "password" in item:
                password_hash, algorithm = hash_password(_field(item, "password", str)), SHA256
            else:
                password_hash = _field(item, "password_hash", str, "")
                algorithm = _field(item, "hashing_algorithm", str, SHA256)
            admin.put_user(name, password_hash, _tags(item.get("tags", "")), algorithm)
            limits = item.get("limits")
            for limit, value in (limits.items() if isinstance(limits, dict) else ()):
                admin.set_user_limit(name, limit, value)
        for item in _items(definitions, "vhosts"):
            admin.put_vhost(_field(item, "name", str))
        for item in _items(definitions, "permissions"):
            admin.set_permissions(
                _field(item, "user", str),
                _field(item, "vhost", str),
                _field(item, "configure", str, ""),
                _field(item, "write", str, ""),
                _field(item, "read", str, ""),
            )
        for item in _items(definitions, "topic_permissions"):
            admin.set_topic_permission(
                _field(item, "user", str),
                _field(item, "vhost", str),
                _field(item, "exchange", str),
                _field(item, "write", str, ""),
                _field(item, "read", str, ""),
            )
    for item in _items(definitions, "parameters"):
        vhost = _vhost(node, item, only_vhost)
        if item.get("component") == VHOST_LIMITS_COMPONENT and isinstance(item.get("value"), dict):
            for name, value in item["value"].items():
                admin.set_vhost_limit(vhost.name, name, value)
        else:
            log.warning(
                "definitions: parameter %r of component %r is not supported; skipped",
                item.get("name"),
                item.get("component"),
            )
    for item in _items(definitions, "policies"):
        vhost = _vhost(node, item, only_vhost)
        for key in ("pattern", "definition"):
            if key not in item:
                raise ImportRefused(["key_missing", key])
        admin.set_policy(vhost.name, _field(item, "name", str), item)


def declarations(node: Node, definitions: Any, only_vhost: str | None = None) -> Iterator[Callable[[], Any]]:
    """The document's exchanges, queues and bindings, each an operation to run (in a cluster, each goes
    through etcd: broker/management/through_cluster.py). Lazy: each is made once the one before has run,
    so a binding finds the ends declared before it."""
    if not isinstance(definitions, dict):
        raise ImportRefused("not_json")
    for item in _items(definitions, "exchanges"):
        vhost = _vhost(node, item, only_vhost)
        name = _field(item, "name", str)
        if name in vhost.exchanges:
            continue
        yield partial(
            vhost.declare_exchange,
            name,
            _field(item, "type", str),
            durable=_field(item, "durable", bool, True),
            auto_delete=_field(item, "auto_delete", bool, False),
            internal=_field(item, "internal", bool, False),
            arguments=_field(item, "arguments", dict, {}),
        )
    for item in _items(definitions, "queues"):
        vhost = _vhost(node, item, only_vhost)
        name = _field(item, "name", str)
        if name in vhost.queues:
            continue
        yield partial(
            vhost.declare_queue,
            name,
            owner=None,
            durable=_field(item, "durable", bool, True),
            exclusive=False,
            auto_delete=_field(item, "auto_delete", bool, False),
            arguments=_field(item, "arguments", dict, {}),
        )
    for item in _items(definitions, "bindings"):
        vhost = _vhost(node, item, only_vhost)
        source = vhost.exchanges.get(_field(item, "source", str))
        to_queue = _field(item, "destination_type", str, "queue") == "queue"
        destination = (vhost.queues if to_queue else vhost.exchanges).get(_field(item, "destination", str))
        if source is None or destination is None or source.name == DEFAULT_EXCHANGE:
            continue
        yield partial(
            vhost.bind,
            source,
            destination,
            _field(item, "routing_key", str, ""),
            _field(item, "arguments", dict, {}),
        )


def _vhost(node: Node, item: dict[str, Any], only_vhost: str | None) -> VirtualHost:
    name = only_vhost if only_vhost is not None else _field(item, "vhost", str)
    vhost = node.vhosts.get(name)
    if vhost is None:
        raise ImportRefused(["no_such_vhost", name])
    return vhost
