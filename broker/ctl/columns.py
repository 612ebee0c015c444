"""rabbitmqctl's column names for each list verb, and where the management API keeps each value.

Most columns are the API's field of the same name. rabbitmqctl's pid columns have no Erlang pid to show
over HTTP: a connection's or channel's shows its name (what close_connection takes), and a queue's is
left empty, as is any column the broker's API does not report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

Extract = Callable[[dict[str, Any]], Any]
Columns = Mapping[str, Extract]


def field(*path: str) -> Extract:
    """The value at `path` in the API's object, None when any step is missing."""

    def extract(item: dict[str, Any]) -> Any:
        value: Any = item
        for step in path:
            if not isinstance(value, dict):
                return None
            value = value.get(step)
        return value

    return extract


def fields(*names: str) -> dict[str, Extract]:
    return {name: field(name) for name in names}


def constant(value: Any) -> Extract:
    return lambda item: value


def _protocol(item: dict[str, Any]) -> Any:
    # The API says "AMQP 0-9-1"; rabbitmqctl shows the version tuple, {0,9,1}.
    protocol = item.get("protocol")
    if isinstance(protocol, str) and protocol.startswith("AMQP "):
        return "{" + protocol.removeprefix("AMQP ").replace("-", ",") + "}"
    return protocol


def _definition(item: dict[str, Any]) -> Any:
    definition = item.get("definition")
    return None if definition is None else json.dumps(definition, separators=(",", ":"))


def _tags(item: dict[str, Any]) -> Any:
    # RabbitMQ before 3.9 answered tags as one comma-separated string.
    tags = item.get("tags")
    return [t for t in tags.split(",") if t] if isinstance(tags, str) else tags


def _online(item: dict[str, Any]) -> Any:
    state = item.get("state")
    return None if state is None else state != "down"


QUEUES: Columns = {
    **fields(
        "arguments",
        "auto_delete",
        "consumer_capacity",
        "consumer_utilisation",
        "consumers",
        "disk_reads",
        "disk_writes",
        "durable",
        "exclusive",
        "exclusive_consumer_tag",
        "head_message_timestamp",
        "members",
        "memory",
        "message_bytes",
        "message_bytes_persistent",
        "message_bytes_ram",
        "message_bytes_ready",
        "message_bytes_unacknowledged",
        "messages",
        "messages_persistent",
        "messages_ram",
        "messages_ready",
        "messages_ready_ram",
        "messages_unacknowledged",
        "messages_unacknowledged_ram",
        "name",
        "policy",
        "slave_pids",
        "state",
        "synchronised_slave_pids",
        "type",
    ),
    "exclusive_consumer_pid": field("exclusive_consumer_details", "channel_details", "name"),
    "leader": field("node"),
    "online": _online,
    "owner_pid": field("owner_pid_details", "name"),
    "pid": constant(None),
}
EXCHANGES: Columns = fields("arguments", "auto_delete", "durable", "internal", "name", "policy", "type")
BINDINGS: Columns = {
    "arguments": field("arguments"),
    "destination_kind": field("destination_type"),
    "destination_name": field("destination"),
    "routing_key": field("routing_key"),
    "source_kind": constant("exchange"),
    "source_name": field("source"),
}
CONNECTIONS: Columns = {
    **fields(
        "auth_mechanism",
        "channel_max",
        "channels",
        "client_properties",
        "connected_at",
        "frame_max",
        "host",
        "name",
        "peer_cert_issuer",
        "peer_cert_subject",
        "peer_cert_validity",
        "peer_host",
        "peer_port",
        "port",
        "recv_cnt",
        "recv_oct",
        "send_cnt",
        "send_oct",
        "send_pend",
        "ssl",
        "ssl_cipher",
        "ssl_hash",
        "ssl_key_exchange",
        "ssl_protocol",
        "state",
        "timeout",
        "user",
        "vhost",
    ),
    "pid": field("name"),
    "protocol": _protocol,
}
CHANNELS: Columns = {
    **fields(
        "acks_uncommitted",
        "confirm",
        "consumer_count",
        "global_prefetch_count",
        "messages_unacknowledged",
        "messages_uncommitted",
        "messages_unconfirmed",
        "name",
        "number",
        "prefetch_count",
        "transactional",
        "user",
        "vhost",
    ),
    "connection": field("connection_details", "name"),
    "pid": field("name"),
}
CONSUMERS: Columns = {
    **fields("ack_required", "active", "activity_status", "arguments", "consumer_tag", "prefetch_count"),
    "channel_pid": field("channel_details", "name"),
    "queue_name": field("queue", "name"),
}
USERS: Columns = {"user": field("name"), "tags": _tags}
VHOSTS: Columns = fields(
    "cluster_state", "default_queue_type", "description", "metadata", "name", "tags", "tracing"
)
PERMISSIONS: Columns = fields("user", "configure", "write", "read")
USER_PERMISSIONS: Columns = fields("vhost", "configure", "write", "read")
POLICIES: Columns = {**fields("vhost", "name", "pattern", "apply-to", "priority"), "definition": _definition}
