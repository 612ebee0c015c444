"""A node's share of the cluster: who it is, the membership view, placement and the metadata view.

Pure: broker/server/cluster.py feeds it from etcd (registration, watches) and runs what it asks for.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from leveret.broker.cluster.admin_sync import AdminView
from leveret.broker.cluster.keys import KeyLayout
from leveret.broker.cluster.leadership import Deposed, Elected, Leadership, Position, QueueId
from leveret.broker.cluster.membership import Membership, Registration
from leveret.broker.cluster.metadata import ClusterMetadata
from leveret.broker.cluster.placement import replica_set
from leveret.broker.cluster.remote import RemoteQueues, no_leader_text
from leveret.broker.cluster.remote_codec import Call, CallResult
from leveret.broker.cluster.roles import QueueRoles
from leveret.broker.queues.arguments import initial_group_size
from leveret.broker.queues.journal import Journal
from leveret.config import Cluster


class ClusterState:
    def __init__(self, config: Cluster) -> None:
        assert config.node is not None
        self.config = config
        self.name = config.node
        self.layout = KeyLayout(config.etcd.prefix)
        self.node_names = [node.name for node in config.nodes]
        self.membership = Membership(self.layout, self.node_names)
        self.metadata = ClusterMetadata(self.layout, self.name, self.replica_set)
        # Vhosts, users, permissions, limits and policies (the Node wires it to itself).
        self.admin = AdminView(self.layout)
        self.admin.vhost_added = self.metadata.vhost_added
        self.admin.quietly = self.metadata.quietly
        self.leadership = Leadership(self.layout, self.name, self.membership.alive_nodes)
        # Each peer link as the management API shows it; the server's PeerLinks sets it.
        self.peer_status: Callable[[], list[dict[str, Any]]] = list
        # A request over the peer link to a node (PeerLinks.request), once the links run.
        self.ask_node: Callable[[str, str, bytes], Awaitable[bytes]] | None = None
        # Queues led by other nodes: the proxies' hub (its vhosts and clock are the node's).
        self.remote = RemoteQueues(
            self.name, {}, self.leadership, time.monotonic,
            publish_hold=config.publish_hold, cancel_after=config.consumer_cancel_delay,
        )
        self.remote.node_alive = self.membership.is_alive
        # Ask a queue's leader (broker/server/remote.py sets it); the callback gets the answer.
        self.call_leader: Callable[[Call, Callable[[CallResult], None]], None] = _no_links
        # Called after each round of leadership decisions: the server runs the hub's reconcile there.
        self.leaders_changed: Callable[[], None] = lambda: None
        # This node became or stopped being a queue's leader (the server's replication sets it).
        self.role_changed: Callable[[Elected | Deposed], None] = lambda effect: None
        # The in-sync replicas of a queue this node leads changed (replication re-checks its confirms).
        self.in_sync_changed: Callable[[tuple[str, str]], None] = lambda queue: None
        # What the vhost's queue table holds as the role changes (broker/cluster/roles.py's contract): the
        # hub, which puts the leader's queue in a proxy's place and a proxy in a deposed queue's.
        self.roles: QueueRoles = self.remote
        # The log ends (last epoch, end offset) of a queue's replicas on the given nodes that answer, this
        # node's included: what an election's pre-vote compares (the server's replication sets it).
        self.log_positions: Callable[[QueueId, tuple[str, ...]], Awaitable[dict[str, Position]]] = _alone
        # The journal of a replicated queue declared (again) on this node while it leads it: replication
        # answers (None: not the leader, Node gives its NotLeaderJournal).
        self.leader_journal: Callable[[str, str], Journal | None] = lambda vhost, name: None

    def registration(self, lease: int) -> Registration:
        entry = self.config.this_node
        return Registration(self.name, entry.amqp, entry.peer, lease)

    def replica_set(self, vhost: str, queue: str, arguments: dict[str, Any]) -> list[str]:
        """Where a durable queue lives, leader first: over the configured nodes, so a node that is down
        keeps its place (it catches up when it returns) and the answer never depends on timing. A quorum
        queue's initial group size replaces the replication factor, capped at the node count as in
        RabbitMQ."""
        size = initial_group_size(arguments) or self.config.effective_replication_factor
        return replica_set(vhost, queue, self.node_names, size)


async def _alone(queue: QueueId, nodes: tuple[str, ...]) -> dict[str, Position]:
    """Without peer links a node knows no replica's log but its own, which it does not hold either."""
    return {}


def _no_links(call: Call, done: Callable[[CallResult], None]) -> None:
    done(CallResult(404, no_leader_text(call.vhost, call.queue, "the peer links are not running")))
