"""Which nodes hold a queue: rendezvous (highest random weight) hashing of its identity over the nodes.

Every node ranks the nodes by a hash of (node, vhost, queue) and takes the first `replicas`: the first is
the leader. It is consistent hashing without a ring: the ranking of two nodes never depends on a third,
so adding a node moves to it only the queues it now ranks first in (about 1/N of them), and removing
one moves only the queues it held. Leadership spreads evenly, and every node computes the same answer
from the same node list, with nothing to store or agree on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _weight(node: str, vhost: str, queue: str) -> int:
    # Lengths first, so that ("a/b", "c") and ("a", "b/c") never hash alike.
    data = f"{len(node)}:{node}|{len(vhost)}:{vhost}|{queue}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def replica_set(vhost: str, queue: str, nodes: Iterable[str], replicas: int) -> list[str]:
    """The `replicas` nodes (fewer when there are fewer nodes) that hold the queue, its leader first."""
    ranked = sorted(set(nodes), key=lambda node: (-_weight(node, vhost, queue), node))
    return ranked[: max(replicas, 1)]


def leader_of(vhost: str, queue: str, nodes: Iterable[str]) -> str:
    return replica_set(vhost, queue, nodes, 1)[0]
