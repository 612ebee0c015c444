"""The `cluster:` section: the nodes of a cluster, its etcd endpoints and its timing knobs.

One file describes the whole cluster and is the same on every node; `leveret --config FILE --node NAME`
says which entry this process is (`cluster.node`). A configuration without the section is a single node.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from . import checks


def split_address(address: str) -> tuple[str, int] | None:
    """("host", port) from "host:port" or "[v6]:port"; None when it is not one."""
    host, colon, port_text = address.rpartition(":")
    if not colon or not port_text.isdigit() or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    elif ":" in host or any(c.isspace() for c in host):
        return None
    port = int(port_text)
    return (host, port) if 1 <= port <= 65535 else None


def _is_endpoint(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and parts.port is not None and bool(parts.hostname)
    except ValueError:
        return False


_ADDRESS = "an address 'host:port' (IPv6 as '[::1]:port')"
_ENDPOINT = checks.Check("an etcd URL such as 'http://127.0.0.1:2379'", _is_endpoint)


@dataclass(frozen=True, slots=True)
class ClusterNode:
    name: str = field(metadata={"check": checks.non_empty()})
    # Where clients connect to this node (its listeners.amqp).
    amqp: str = field(metadata={"check": checks.non_empty()})
    # Where the other nodes reach it (queue replication and forwarding, next slices).
    peer: str = field(metadata={"check": checks.non_empty()})
    # Its management listener; None: none.
    management: str | None = field(default=None, metadata={"check": checks.non_empty()})
    # Its data_dir, when several nodes share one machine (and so one file); None: the top-level data_dir.
    data_dir: str | None = field(default=None, metadata={"check": checks.non_empty()})


@dataclass(frozen=True, slots=True)
class Etcd:
    endpoints: tuple[str, ...] = field(
        metadata={"check": checks.Check("a non-empty list of etcd URLs", lambda v: len(v) > 0)}
    )
    # Every key of this cluster lives under it, so several clusters can share one etcd.
    prefix: str = field(default="/leveret/", metadata={"check": checks.non_empty()})
    # Seconds one request to one member may take before the next member is tried.
    request_timeout: float = field(default=2.0, metadata={"check": checks.positive_number()})

    @staticmethod
    def cross_check(values: Mapping[str, object]) -> list[tuple[str, str]]:
        endpoints = values.get("endpoints")
        problems: list[tuple[str, str]] = []
        if isinstance(endpoints, tuple):
            problems += [
                (f"endpoints[{i}]", f"expected {_ENDPOINT.expected}, got {url!r}")
                for i, url in enumerate(endpoints)
                if not _is_endpoint(url)
            ]
            problems += _duplicates(
                [(f"endpoints[{i}]", url, f"endpoint {url!r}") for i, url in enumerate(endpoints)]
            )
        return problems


@dataclass(frozen=True, slots=True)
class Cluster:
    nodes: tuple[ClusterNode, ...]
    etcd: Etcd
    # This process's entry in `nodes`; normally given on the command line with --node.
    node: str | None = None
    # Replicas of each durable queue, the leader included; capped at the number of nodes.
    replication_factor: int = field(default=3, metadata={"check": checks.int_range(1)})
    # Seconds a node's etcd lease lives without a keepalive: how soon a dead node is noticed, and so
    # most of a failover (up to this plus half a second for etcd to see the expiry). Keepalives go 4 times
    # per TTL. etcd's minimum is 1.5 election timeouts, rounded up: 2 s with its defaults.
    lease_ttl: int = field(default=2, metadata={"check": checks.int_range(2, 3600)})
    # Seconds to open a connection to a peer, and without a frame from it before the link is dead.
    peer_connect_timeout: float = field(default=2.0, metadata={"check": checks.positive_number()})
    peer_timeout: float = field(default=3.0, metadata={"check": checks.positive_number()})
    # For a replicated queue led by another node (broker/cluster/remote.py): seconds a basic.get, purge,
    # delete or message count waits for the leader's answer, a publish waits for a leader before its
    # nack, and a consumer waits for a reachable leader before basic.cancel. The first two should outlast
    # a failover (up to lease_ttl plus about half a second), or every failover fails some of them.
    leader_call_timeout: float = field(default=5.0, metadata={"check": checks.positive_number()})
    publish_hold: float = field(default=5.0, metadata={"check": checks.positive_number()})
    consumer_cancel_delay: float = field(default=10.0, metadata={"check": checks.positive_number()})
    # Log entries a replicated queue's replica keeps behind its state: a follower further behind than
    # that catches up from a snapshot of the queue instead of the log's tail.
    replica_log_entries: int = field(default=100_000, metadata={"check": checks.int_range(10)})

    @property
    def effective_replication_factor(self) -> int:
        return min(self.replication_factor, len(self.nodes))

    @property
    def this_node(self) -> ClusterNode:
        return next(n for n in self.nodes if n.name == self.node)

    @staticmethod
    def cross_check(values: Mapping[str, object]) -> list[tuple[str, str]]:
        nodes = values.get("nodes")
        if not isinstance(nodes, tuple):
            return []
        if not nodes:
            return [("nodes", "expected at least one node")]
        problems = _duplicates(
            [(f"nodes[{i}].name", n.name, f"node name {n.name!r}") for i, n in enumerate(nodes)]
        )
        # Addresses are checked here rather than per field, so that one bad address does not hide the
        # duplicate names and addresses of the other nodes.
        addresses: list[tuple[str, Hashable, str]] = []
        for i, n in enumerate(nodes):
            for kind in ("amqp", "peer", "management"):
                address = getattr(n, kind)
                if address is None:
                    continue
                parsed = split_address(address)
                if parsed is None:
                    problems.append((f"nodes[{i}].{kind}", f"expected {_ADDRESS}, got {address!r}"))
                else:
                    addresses.append((f"nodes[{i}].{kind}", parsed, f"address {address!r}"))
        problems += _duplicates(addresses)
        name = values.get("node")
        if "node" in values and name is None:
            problems.append(("node", "missing: start the node with --node NAME, a name in cluster.nodes"))
        elif isinstance(name, str) and name not in {n.name for n in nodes}:
            known = ", ".join(n.name for n in nodes)
            problems.append(("node", f"no node named {name!r} in cluster.nodes (known: {known})"))
        return problems


def _duplicates(entries: list[tuple[str, Hashable, str]]) -> list[tuple[str, str]]:
    seen: set[Hashable] = set()
    found = []
    for path, key, label in entries:
        if key in seen:
            found.append((path, f"duplicate {label}"))
        seen.add(key)
    return found
