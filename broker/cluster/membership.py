"""Which nodes of the cluster are alive: a view of the `nodes/` keys, each bound to its node's lease.

A node's key exists while its lease is kept alive; when the node stops renewing it (killed, paused, cut
off from etcd) etcd deletes the key at the lease's expiry, and the watch tells every other node. So
"alive" here means "alive to the cluster": holding a lease, whatever its process is doing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from leveret.broker.cluster.etcd_ops import KeyValue, WatchEvent
from leveret.broker.cluster.keys import KeyLayout


@dataclass(frozen=True, slots=True)
class Registration:
    """What a live node says about itself in its key."""

    name: str
    amqp: str
    peer: str
    lease: int

    def encode(self) -> bytes:
        return json.dumps({"name": self.name, "amqp": self.amqp, "peer": self.peer}).encode()


class Membership:
    def __init__(self, layout: KeyLayout, configured: Iterable[str]) -> None:
        self.layout = layout
        self.configured = tuple(configured)
        self.alive: dict[str, KeyValue] = {}  # node name -> its key
        self.revision = 0
        # Called with (name, alive) when a node joins or leaves the cluster.
        self.on_change: Callable[[str, bool], None] = lambda name, alive: None

    def reset(self, kvs: Iterable[KeyValue], revision: int) -> None:
        """The whole `nodes/` range as of `revision` (at start, or after the watch lost its place)."""
        before = set(self.alive)
        self.alive = {self.layout.node_name(kv.key): kv for kv in kvs}
        self.revision = revision
        for name in sorted(before - set(self.alive)):
            self.on_change(name, False)
        for name in sorted(set(self.alive) - before):
            self.on_change(name, True)

    def apply(self, events: Iterable[WatchEvent], revision: int) -> None:
        for event in events:
            name = self.layout.node_name(event.kv.key)
            if event.kind == "DELETE":
                if self.alive.pop(name, None) is not None:
                    self.on_change(name, False)
            else:
                joined = name not in self.alive
                self.alive[name] = event.kv
                if joined:
                    self.on_change(name, True)
        self.revision = max(self.revision, revision)

    def is_alive(self, name: str) -> bool:
        return name in self.alive

    def alive_nodes(self) -> list[str]:
        """The live nodes, in the configuration's order (unknown names, from another config, last)."""
        known = [name for name in self.configured if name in self.alive]
        return known + sorted(set(self.alive) - set(self.configured))
