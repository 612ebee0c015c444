"""What a virtual host tells its metadata store before it changes an exchange, a queue or a binding.

A single node's store (`LOCAL_METADATA`) has nothing to say: every hook returns at once, and the node
behaves exactly as without a cluster. In a cluster (broker/cluster/metadata.py) a hook on a client's
declare, delete, bind or unbind raises `ClusterPending`: the change must first be one etcd transaction.
The session holds that method (and what follows it on the connection) until the transaction is done, then
handles the method again; by then the vhost holds etcd's record, so the ordinary single-node code answers
(declare-ok, or 406 against the stored definition), and the hook lets it through. Code that changes a
vhost outside a client's method (recovery at start) does so inside `ClusterMetadata.quietly()`.
"""

from __future__ import annotations

from typing import Any


class ClusterPending(Exception):  # noqa: N818  (not an error: "wait for the cluster")
    """Raised by a hook: `change` must be agreed in etcd before the method can be answered."""

    def __init__(self, change: Any) -> None:
        super().__init__(change)
        self.change = change


class LocalMetadata:
    """A single node's metadata store: the vhost's own dictionaries are the whole truth."""

    def declaring_exchange(
        self,
        vhost: Any,
        name: str,
        kind: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
        creatable: bool,
    ) -> None:
        """Before an exchange.declare is answered; `creatable`: its arguments are valid for a new one."""

    def deleting_exchange(self, vhost: Any, name: str) -> None:
        """Before an exchange.delete is carried out."""

    def declaring_queue(
        self,
        vhost: Any,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: dict[str, Any],
        creatable: bool,
    ) -> None:
        """Before a queue.declare is answered (a server-named one's with the name chosen for it)."""

    def deleting_queue(self, vhost: Any, name: str) -> None:
        """Before a queue.delete is carried out."""

    def binding(
        self,
        vhost: Any,
        source: Any,
        destination: Any,
        routing_key: str,
        arguments: dict[str, Any],
        bind: bool,
    ) -> None:
        """Before a bind (or, with bind=False, an unbind) is carried out."""

    def server_name(self) -> str:
        """The name for a server-named queue being declared again after its etcd change ("": a new one)."""
        return ""

    def looking_up(self, vhost: Any, kind: str, name: str) -> None:
        """A method names an exchange or queue this node does not have: the cluster may know it already
        (declared on another node a moment ago, before this node's watch brought it)."""

    def removed(self, vhost: Any, thing: Any) -> None:
        """An exchange or queue went without a client asking (auto-delete, expiry): never raises."""


LOCAL_METADATA = LocalMetadata()
