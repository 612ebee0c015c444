"""What sessions need of their node (broker/node.py's Node has it all).

A Protocol, so that imports point one way: the node holds its sessions, the sessions know the node only
by these services.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from leveret.amqp.handshake import ServerSettings
    from leveret.broker.alarms import ResourceAlarms
    from leveret.broker.auth import Authority
    from leveret.broker.cluster.state import ClusterState
    from leveret.broker.memory_release import ReleaseSchedule
    from leveret.broker.queues.consumer import Consumer
    from leveret.broker.stats import MessageTotals
    from leveret.broker.vhost import VirtualHost
    from leveret.config import Config


class NodeServices(Protocol):
    @property
    def config(self) -> Config: ...

    @property
    def server_settings(self) -> ServerSettings: ...

    @property
    def authority(self) -> Authority: ...

    @property
    def alarms(self) -> ResourceAlarms: ...

    @property
    def vhosts(self) -> Mapping[str, VirtualHost]: ...

    @property
    def connections(self) -> Sized: ...

    @property
    def cluster(self) -> ClusterState | None:
        """None on a single node."""

    @property
    def reply_consumers(self) -> dict[str, Consumer]:
        """Direct reply-to consumers by their token (broker/session/reply_to.py)."""

    def durable_position(self) -> int: ...

    @property
    def message_totals(self) -> MessageTotals:
        """What closed channels counted, for message_stats (broker/stats.py)."""

    @property
    def memory_release(self) -> ReleaseSchedule:
        """Told of each closed channel (broker/memory_release.py)."""

    def check_connection_limit(self, username: str, vhost: str) -> None: ...

    def check_user_connection_limit(self, username: str) -> None: ...

    def check_user_channel_limit(self, username: str) -> None: ...

    # `session` is the ConnectionSession (typed loosely: this protocol sits below it).
    def connection_opened(self, session: Any) -> None: ...

    def connection_closed(self, session: Any) -> None: ...
