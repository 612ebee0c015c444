"""The node's objects as RabbitMQ's management API shows them: same field names, same meanings.

Only fields Leveret can fill truthfully are present; rates, memory and Erlang process details are left out.
Functions take live domain objects and return plain JSON-ready dicts.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote_plus

from leveret import __version__
from leveret.broker.cluster.remote import RemoteConsumer
from leveret.broker.definitions import json_value
from leveret.broker.exchanges.base import Binding, Exchange
from leveret.broker.node import ADVERTISED_VERSION, Node
from leveret.broker.policies import effective_definition
from leveret.broker.queues.queue import Queue
from leveret.broker.vhost import VirtualHost
from leveret.config import User

if TYPE_CHECKING:
    from leveret.broker.queues.consumer import Consumer
    from leveret.broker.session.channel import ChannelSession
    from leveret.broker.session.connection import ConnectionSession

Json = dict[str, Any]


# An AMQP table value (arguments, client properties) as JSON: bytes become text, decimals numbers, AMQP
# timestamps seconds (as RabbitMQ renders them).
jsonable = json_value


def node_name(node: Node) -> str:
    """This node's name: in a cluster its `cluster.nodes` name, as every node calls it."""
    return node.cluster.name if node.cluster is not None else node.alarms.node_name


def _split_address(address: str) -> tuple[str, int | None]:
    host, _, port = address.rpartition(":")
    return (host, int(port)) if port.isdigit() else (address, None)


# ---- queues -----------------------------------------------------------------------------------------


def queue(node: Node, q: Queue) -> Json:
    ready, unacked = q.message_count, q.unacked
    return {
        "name": q.name,
        "vhost": q.vhost,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive,
        "arguments": jsonable(q.arguments),
        "type": q.arguments.get("x-queue-type", "classic"),
        "node": node_name(node),
        "state": "running",
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "consumers": q.consumer_count,
        "policy": q.policy.name if q.policy is not None else None,
        "operator_policy": q.operator_policy.name if q.operator_policy is not None else None,
        "effective_policy_definition": effective_definition(q.policy, q.operator_policy),
        **_replication(node, q),
    }


def _replication(node: Node, q: Queue) -> Json:
    """A replicated queue's leader, members and the members that are up, as RabbitMQ shows them for a
    quorum queue (`node` is the leader there too; none while the queue has no leader)."""
    cluster = node.cluster
    if cluster is None:
        return {}
    key = (q.vhost, q.name)
    members = cluster.leadership.members(key)
    if not members:
        return {}  # local to this node: exclusive, non-durable or server-named
    leader = cluster.leadership.leader(key, node.clock())
    return {
        "node": leader,
        "leader": leader,
        "members": list(members),
        "online": [m for m in members if cluster.membership.is_alive(m)],
    }


NODE_STATS = "node.stats"  # the peer request a node answers with `own_stats`


def nodes(node: Node, uptime_ms: int, remote: dict[str, Json]) -> list[Json]:
    """GET /api/nodes: every node of the cluster, alive or not (a single node: itself), with the stats
    each live node gave (`remote`, asked over the peer links; this node's own are read here)."""
    cluster = node.cluster
    names = [node_name(node)] if cluster is None else cluster.node_names
    result = []
    for name in names:
        running = cluster is None or name == cluster.name or cluster.membership.is_alive(name)
        entry: Json = {"name": name, "type": "disc", "running": running}
        if name == node_name(node):
            entry.update(own_stats(node, uptime_ms))
        elif running:
            entry.update(remote.get(name, {}))
        result.append(entry)
    return result


def own_stats(node: Node, uptime_ms: int) -> Json:
    """What a node knows only of itself (memory, descriptors, uptime, its peer links)."""
    active = node.alarms.active
    stats: Json = {
        "uptime": uptime_ms,
        "mem_alarm": "memory" in active,
        "disk_free_alarm": "disk" in active,
        "os_pid": str(os.getpid()),
        "processors": os.cpu_count() or 1,
        "partitions": [],
        "sockets_used": len(node.connections),
    }
    if node.cluster is not None:
        stats["cluster_links"] = node.cluster.peer_status()
    try:
        with open("/proc/self/statm") as statm:
            stats["mem_used"] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        stats["fd_used"] = len(os.listdir("/proc/self/fd"))
    except OSError:
        pass  # not Linux: RabbitMQ too leaves out what it cannot measure
    return stats


def queue_details(node: Node, q: Queue) -> Json:
    """One queue, with its consumers, as GET /api/queues/{vhost}/{name} answers: this node's (a leader's
    consumers on other nodes have no channel here; their count is in the queue's)."""
    local = [c for c in q.consumers if not isinstance(c, RemoteConsumer)]
    return {**queue(node, q), "consumer_details": [consumer(node, cast("Consumer", c)) for c in local]}


# ---- exchanges and bindings -------------------------------------------------------------------------


def exchange(vhost: VirtualHost, x: Exchange) -> Json:
    shown = {
        "name": x.name,
        "vhost": vhost.name,
        "type": x.kind,
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": jsonable(x.arguments),
    }
    if x.policy is not None:  # RabbitMQ shows an exchange's policy only when one applies
        shown["policy"] = x.policy.name
    return shown


def properties_key(routing_key: str, arguments: dict[str, Any]) -> str:
    """RabbitMQ's name of a binding in paths: the routing key ("~" when empty) when there are no arguments,
    else key~hash-of-arguments. The hash differs from RabbitMQ's (an Erlang term hash; 4 bytes, base64url as
    RabbitMQ's); clients only read it from a listing and pass it back."""
    # The key is quoted as RabbitMQ quotes it: form-encoded ("a.#" is "a.%23"), "~" as %7E.
    quoted = quote_plus(routing_key, safe="").replace("~", "%7E")
    if not arguments:
        return quoted or "~"
    digest = hashlib.blake2b(repr(sorted(arguments.items())).encode(), digest_size=4).digest()
    return f"{quoted}~{base64.urlsafe_b64encode(digest).decode().rstrip('=')}"


def _binding(vhost: str, source: str, destination: Queue | Exchange, key: str, args: dict[str, Any]) -> Json:
    return {
        "source": source,
        "vhost": vhost,
        "destination": destination.name,
        "destination_type": "queue" if isinstance(destination, Queue) else "exchange",
        "routing_key": key,
        "arguments": jsonable(args),
        "properties_key": properties_key(key, args),
    }


def bindings(vhost: VirtualHost) -> list[Json]:
    """Every binding of a vhost; the default exchange's implicit ones (one per queue) come first, as the
    vhost keeps them as bindings of the exchange named ""."""
    listed: list[Json] = []
    for x in sorted(vhost.exchanges.values(), key=_name):
        b: Binding
        for b in x.bindings:
            if isinstance(b.destination, Queue | Exchange):
                listed.append(_binding(vhost.name, x.name, b.destination, b.routing_key, b.arguments))
    return listed


def _name(item: Queue | Exchange) -> str:
    return item.name


# ---- vhosts ------------------------------------------------------------------------------------------


def vhost(node: Node, v: VirtualHost) -> Json:
    ready = sum(q.message_count for q in v.queues.values())
    unacked = sum(q.unacked for q in v.queues.values())
    return {
        "name": v.name,
        "description": v.description,
        "tags": list(v.tags),
        "metadata": {"description": v.description, "tags": list(v.tags)},
        "tracing": False,
        "cluster_state": {node_name(node): "running"},
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    }


# ---- connections, channels, consumers ----------------------------------------------------------------


def connection_name(session: ConnectionSession) -> str:
    """RabbitMQ's name of a connection: "peer_host:peer_port -> host:port"."""
    return f"{session.peer} -> {session.local}"


def connection(node: Node, session: ConnectionSession) -> Json:
    conn = session.conn
    peer_host, peer_port = _split_address(session.peer)
    host, port = _split_address(session.local)
    return {
        "name": connection_name(session),
        "node": node_name(node),
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "state": "blocked" if session.throttle.blocked else "running",
        "user": session.username,
        "vhost": session.vhost.name if session.vhost is not None else conn.vhost,
        "host": host,
        "port": port,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "ssl": session.tls,
        "auth_mechanism": conn.mechanism,
        "channels": len(session.channels),
        "channel_max": conn.channel_max,
        "frame_max": conn.frame_max,
        "timeout": conn.heartbeat,
        "client_properties": jsonable(conn.client_properties),
        "connected_at": session.connected_at,
    }


# The domain knows channels and sessions through Protocols (imports point one way); this API serves the
# node's real ones.
def _session_of(channel: ChannelSession) -> ConnectionSession:
    return cast("ConnectionSession", channel.session)


def _channel_name(channel: ChannelSession) -> str:
    return f"{connection_name(_session_of(channel))} ({channel.number})"


def channel(node: Node, ch: ChannelSession) -> Json:
    session = _session_of(ch)
    peer_host, peer_port = _split_address(session.peer)
    return {
        "name": _channel_name(ch),
        "node": node_name(node),
        "number": ch.number,
        "user": session.username,
        "vhost": ch.vhost.name,
        "connection_details": {
            "name": connection_name(session),
            "peer_host": peer_host,
            "peer_port": peer_port,
        },
        "state": "running" if ch.flow_active else "flow",
        "consumer_count": len(ch.consumers),
        "messages_unacknowledged": len(ch.unacked),
        "prefetch_count": ch.prefetch_count,
        "global_prefetch_count": ch.global_prefetch,
        "confirm": ch.confirming,
        "transactional": ch.tx is not None,
    }


def consumer(node: Node, c: Consumer) -> Json:
    ch = cast("ChannelSession", c.channel)
    session = _session_of(ch)
    peer_host, peer_port = _split_address(session.peer)
    return {
        "consumer_tag": c.tag,
        "queue": {"name": c.queue.name, "vhost": c.queue.vhost},
        "channel_details": {
            "name": _channel_name(ch),
            "number": ch.number,
            "connection_name": connection_name(session),
            "node": node_name(node),
            "peer_host": peer_host,
            "peer_port": peer_port,
            "user": session.username,
        },
        "ack_required": not c.no_ack,
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch,
        "arguments": jsonable(c.arguments),
        "active": True,
        "activity_status": "up",
    }


def channels_of(sessions: Iterable[ConnectionSession]) -> list[ChannelSession]:
    return [ch for s in sessions for _, ch in sorted(s.channels.items()) if not ch.closed]


# ---- users and the overview --------------------------------------------------------------------------


def user(u: User, limits: dict[str, int] | None = None) -> Json:
    return {
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": list(u.tags),
        "limits": dict(limits or {}),
    }


def whoami(u: User) -> Json:
    return {"name": u.name, "tags": list(u.tags)}


def listeners(node: Node) -> list[Json]:
    configured = node.config.listeners
    found = [("amqp", configured.amqp), ("amqp/ssl", configured.amqps), ("http", configured.management)]
    return [
        {"node": node_name(node), "protocol": protocol, "ip_address": host, "port": listener.port}
        for protocol, listener in found
        if listener is not None
        for host in listener.hosts
    ]


def overview(node: Node, exchange_types: Iterable[str]) -> Json:
    queues = list(node.queues())
    ready = sum(q.message_count for q in queues)
    unacked = sum(q.unacked for q in queues)
    channels = channels_of(node.connections)
    return {
        # RabbitMQ lets an operator rename the product (product_name/product_version); the RabbitMQ
        # version stays the one Leveret claims to behave as, as in connection.start.
        "management_version": ADVERTISED_VERSION,
        "rabbitmq_version": ADVERTISED_VERSION,
        "product_name": "Leveret",
        "product_version": __version__,
        "cluster_name": node_name(node),
        "node": node_name(node),
        "rates_mode": "none",
        "exchange_types": [{"name": kind, "description": "", "enabled": True} for kind in exchange_types],
        "object_totals": {
            "connections": len(node.connections),
            "channels": len(channels),
            "consumers": sum(len(ch.consumers) for ch in channels),
            "exchanges": sum(len(v.exchanges) for v in node.vhosts.values()),
            "queues": len(queues),
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        # No message counters are kept yet: RabbitMQ too answers {} before any message moves.
        "message_stats": {},
        "listeners": listeners(node),
    }
