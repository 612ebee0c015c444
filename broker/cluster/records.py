"""The values of the metadata keys: exchanges, queues and bindings as JSON records.

Field tables (arguments) keep their AMQP types, so they are stored as encoded tables (base64), as in the
definitions file. A binding records the incarnations (etcd create revisions) of its two ends: a binding
whose source or destination was deleted and declared again is stale, and applies to nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from pamqp import decode, encode


def encode_table(table: dict[str, Any]) -> str:
    return base64.b64encode(encode.field_table(table)).decode() if table else ""


def decode_table(text: str) -> dict[str, Any]:
    return decode.field_table(base64.b64decode(text))[1] if text else {}


@dataclass(frozen=True, slots=True)
class ExchangeRecord:
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: str  # encode_table

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> ExchangeRecord:
        return cls(**json.loads(data))


@dataclass(frozen=True, slots=True)
class QueueRecord:
    name: str
    durable: bool
    auto_delete: bool
    arguments: str
    # Where the queue lives, leader first (placement at declare time); the node that declared it.
    replicas: tuple[str, ...]
    declared_on: str
    # Owned by a connection on `declared_on`; the record is bound to that node's lease.
    exclusive: bool = False

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> QueueRecord:
        fields = json.loads(data)
        fields["replicas"] = tuple(fields["replicas"])
        return cls(**fields)

    def definition(self) -> tuple[bool, bool, dict[str, Any]]:
        return self.durable, self.auto_delete, decode_table(self.arguments)


@dataclass(frozen=True, slots=True)
class BindingRecord:
    source: str
    destination: str
    destination_type: str  # queue or exchange
    routing_key: str
    arguments: str
    # The create revisions of the source and destination records bound (0: a predeclared exchange).
    source_revision: int
    destination_revision: int

    @property
    def binding_id(self) -> str:
        return binding_id(self.destination_type, self.destination, self.routing_key, self.arguments)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> BindingRecord:
        return cls(**json.loads(data))


def binding_id(destination_type: str, destination: str, routing_key: str, arguments: str) -> str:
    """A binding's identity under its source: what RabbitMQ compares (destination, key, arguments)."""
    text = json.dumps([destination_type, destination, routing_key, arguments])
    return hashlib.sha256(text.encode()).hexdigest()[:32]
