"""A broker node: its virtual hosts, users and open connections. Synchronous; the server drives it."""

from __future__ import annotations

import heapq
import itertools
import platform
import time
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Any

from leveret import __version__
from leveret.amqp.constants import NOT_ALLOWED
from leveret.amqp.errors import ConnectionLevelError
from leveret.amqp.handshake import ServerSettings
from leveret.broker.admin import Administration
from leveret.broker.alarms import ResourceAlarms
from leveret.broker.auth import Authority
from leveret.broker.cluster.confirms import ConfirmGate
from leveret.broker.cluster.replication import NotLeaderJournal
from leveret.broker.cluster.state import ClusterState
from leveret.broker.memory_release import ReleaseSchedule
from leveret.broker.queues.deadlines import Deadlines
from leveret.broker.stats import MessageTotals
from leveret.broker.vhost import VirtualHost
from leveret.config import Config

if TYPE_CHECKING:
    from collections.abc import Iterator

    from leveret.broker.pager import NodePager
    from leveret.broker.persistence import Persistence
    from leveret.broker.queues.consumer import Consumer
    from leveret.broker.queues.journal import Journal
    from leveret.broker.queues.queue import Queue
    from leveret.broker.session.connection import ConnectionSession

# What connection.start advertises. kombu/Celery use a channel-wide (global) prefetch only when the
# server claims RabbitMQ >= 3.3; Leveret implements global prefetch as RabbitMQ does, so it says
# "RabbitMQ" in `product`-sniffing clients' terms via the version string and names itself in
# `leveret_version`. See README "What Leveret advertises".
ADVERTISED_PRODUCT = "RabbitMQ"
ADVERTISED_VERSION = "3.13.0"


class Node:
    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock  # seconds; the server passes trio.current_time so MockClock drives tests
        limits = config.limits
        self.server_settings = ServerSettings(
            channel_max=limits.channel_max,
            frame_max=limits.frame_max,
            heartbeat=limits.heartbeat,
            max_message_size=limits.max_message_size,
            product=ADVERTISED_PRODUCT,
            version=ADVERTISED_VERSION,
            extra_properties={"leveret_version": __version__, "platform": "Leveret (Python/trio)"},
        )
        self.authority = Authority(config)
        self.admin = Administration(self)  # run-time changes to users, vhosts, permissions, vhost limits
        self.deadlines = Deadlines()  # queue timers (TTL, queue expiry): broker/server/timers.py runs them
        self.persistence: Persistence | None = None
        self.pager: NodePager | None = None
        self.cluster: ClusterState | None = None  # set below when the config has a `cluster:` section
        self.vhosts: dict[str, VirtualHost] = {}
        for name in config.vhosts:
            self.add_vhost(name)
        self.connections: set[ConnectionSession] = set()
        # Direct reply-to consumers by their token (see broker/session/reply_to.py).
        self.reply_consumers: dict[str, Consumer] = {}
        self.alarms = ResourceAlarms(f"leveret@{platform.node()}", self._alarms_changed)
        # None: a single node (no `cluster:` section), which never touches etcd.
        self.cluster = ClusterState(config.cluster) if config.cluster is not None else None
        # A cluster node's confirms wait for tickets of its gate (replication, store writes): see
        # broker/cluster/confirms.py. None on a single node, whose confirms wait for the store alone.
        self.gate: ConfirmGate | None = ConfirmGate() if self.cluster is not None else None
        self._not_leader = NotLeaderJournal()
        if self.cluster is not None:
            self.cluster.metadata.vhosts = self.vhosts
            self.cluster.admin.node = self
            self.cluster.remote.vhosts = self.vhosts
            self.cluster.remote.clock = clock
            self.cluster.remote.confirms_changed = self.confirms_changed
            self.cluster.remote.unacked_tables = self._unacked_tables
            for vhost in self.vhosts.values():
                vhost.metadata = self.cluster.metadata
        # Users, vhosts, permissions or vhost limits changed at run time: the store saves them.
        self.definitions_changed: Callable[[], None] = lambda: None
        self.message_totals = MessageTotals()  # what closed channels counted (message_stats)
        # Closed channels and connections bring the next malloc_trim forward (broker/memory_release.py).
        self.memory_release = ReleaseSchedule(0.0)
        # Callbacks waiting for the store to make a position durable (HTTP publishes), by position.
        self._durable_waiters: list[tuple[int, Callable[[], None]]] = []
        # The same with the outcome (publishes other nodes sent to queues led here): a heap by position,
        # so that each release looks only at those it settles (there is one per publish in flight).
        self._confirm_waiters: list[tuple[int, int, Callable[[bool], None]]] = []
        self._confirm_serial = itertools.count()

    def add_vhost(self, name: str) -> VirtualHost:
        """A new, empty vhost (its predeclared exchanges only), wired to the node's store and pager."""
        vhost = VirtualHost(name, self.clock, self.deadlines)
        if self.persistence is not None:
            vhost.journal_for = self._journal_for
            vhost.definitions_changed = self.persistence.definitions_changed
        if self.pager is not None:
            vhost.pager = self.pager
        if self.cluster is not None:
            vhost.metadata = self.cluster.metadata
            if self.cluster.remote.active:
                vhost.proxies = self.cluster.remote
        self.vhosts[name] = vhost
        self.authority.vhosts.add(name)
        return vhost

    def attach_persistence(self, persistence: Persistence) -> None:
        """Durable queues get store-backed journals and durable definitions are saved from now on."""
        self.persistence = persistence
        persistence.node = self
        self.definitions_changed = persistence.definitions_changed
        for vhost in self.vhosts.values():
            vhost.journal_for = self._journal_for
            vhost.definitions_changed = persistence.definitions_changed

    def _journal_for(self, vhost: str, name: str) -> Journal:
        """A durable queue's journal. In a cluster every durable queue that is not exclusive (server-named
        ones too) is replicated: it has none until this node leads it (its replica files are its log:
        broker/server/replication.py), and publishes to it here are refused."""
        assert self.persistence is not None
        if self.gate is None:
            return self.persistence.journal_for(vhost, name)
        assert self.cluster is not None
        return self.cluster.leader_journal(vhost, name) or self._not_leader

    def attach_pager(self, pager: NodePager) -> None:
        """Queues declared from now on count their ready messages against the pager's memory budget, and
        page out through it: attach before recovery."""
        self.pager = pager
        for vhost in self.vhosts.values():
            vhost.pager = pager

    def queues(self) -> Iterator[Queue]:
        for vhost in self.vhosts.values():
            yield from vhost.queues.values()

    def durable_position(self) -> int:
        """How far the store has made appends durable; publishes waiting on no store are always safe.
        In a cluster: the gate's safe ticket."""
        if self.gate is not None:
            return self.gate.safe()
        return self.persistence.durable_position if self.persistence is not None else 0

    def when_durable(self, position: int, callback: Callable[[], None]) -> None:
        """Call `callback` once the store has made `position` durable (at once if it has)."""
        if position <= self.durable_position():
            callback()
        else:
            self._durable_waiters.append((position, callback))

    def commit_completed(self, failed: range | None, error: OSError | None = None) -> None:
        """A group commit finished: release the confirms it made safe (nack those it failed). `error`, its
        write failure, holds the disk alarm until a commit succeeds (see ResourceAlarms)."""
        self.alarms.commit_finished(error)
        if failed is not None:
            self._discard_unstored()
        if self.pager is not None:
            self.pager.commit_completed()
        if self.gate is not None:  # a cluster's confirms wait for replication, not for this store
            self.confirms_changed()
            return
        self._release_confirms(self.durable_position(), failed)

    def confirms_changed(self) -> None:
        """(A cluster node) the gate released or failed tickets, or leaders of queues led elsewhere
        answered publishes: send the confirms and nacks now due."""
        assert self.gate is not None
        failed = self.gate.take_failed()
        self._release_confirms(self.gate.safe(), failed or None)

    def when_confirmed(self, position: int, callback: Callable[[bool], None]) -> None:
        """`callback(True)` once `position` is safe (a confirm waiting for it may go), `callback(False)` if
        it failed (its publish is nacked): at once if it is safe already."""
        if position <= self.durable_position():
            callback(True)
        else:
            heapq.heappush(self._confirm_waiters, (position, next(self._confirm_serial), callback))

    def _release_confirms(self, durable: int, failed: Container[int] | None) -> None:
        waiters = self._confirm_waiters
        if failed is not None and waiters:  # rare (a deposed leader's tickets): every waiter is looked at
            kept = []
            for waiter in waiters:
                if waiter[0] in failed:
                    waiter[2](False)
                else:
                    kept.append(waiter)
            heapq.heapify(kept)
            self._confirm_waiters = waiters = kept
        while waiters and waiters[0][0] <= durable:
            heapq.heappop(waiters)[2](True)
        for vhost in self.vhosts.values():
            vhost.executor.commit_completed(durable, failed)
        if self._durable_waiters:
            waiting, self._durable_waiters = self._durable_waiters, []
            for position, callback in waiting:
                if position <= durable or failed is not None and position in failed:
                    callback()
                else:
                    self._durable_waiters.append((position, callback))
        for session in self.connections:
            for channel in session.channels.values():
                if channel.awaiting_confirms:
                    if failed is not None:
                        channel.fail_confirms(failed)
                    channel.flush_confirms(durable)
            if session.conn.has_output:
                session.wake()

    def _discard_unstored(self) -> None:
        """Nacked publishes are not stored later: their queues drop them (see Queue.discard)."""
        assert self.persistence is not None
        unstored = self.persistence.take_unstored()
        if not unstored:
            return
        for queue in list(self.queues()):
            seqs = unstored.get(queue.journal)  # type: ignore[call-overload]  # a StoreJournal or not
            if seqs:
                queue.discard(seqs)

    def _alarms_changed(self, active: frozenset[str]) -> None:
        for session in self.connections:
            session.throttle.alarms_changed(active)
            if session.conn.has_output:
                session.wake()

    def check_connection_limit(self, username: str, vhost: str) -> None:
        """RabbitMQ's per-vhost max-connections, checked at connection.open."""
        limit = self.vhosts[vhost].limits.get("max-connections")
        if limit is not None and limit >= 0:
            opened = sum(1 for session in self.connections if session.vhost.name == vhost)
            if opened >= limit:
                raise ConnectionLevelError(
                    NOT_ALLOWED,
                    f"access to vhost '{vhost}' refused for user '{username}': "
                    f"connection limit ({limit}) is reached",
                )

    def check_user_connection_limit(self, username: str) -> None:
        """RabbitMQ's per-user max-connections, checked at connection.open after the vhost's."""
        limit = self.admin.user_limit(username, "max-connections")
        if limit is not None and sum(1 for s in self.connections if s.username == username) >= limit:
            raise ConnectionLevelError(
                NOT_ALLOWED,
                f"connection refused for user '{username}': user connection limit ({limit}) is reached",
            )

    def check_user_channel_limit(self, username: str) -> None:
        """RabbitMQ's per-user max-channels, over all of the user's connections, checked at channel.open."""
        limit = self.admin.user_limit(username, "max-channels")
        if limit is not None:
            opened = sum(len(s.channels) for s in self.connections if s.username == username)
            if opened >= limit:
                raise ConnectionLevelError(
                    NOT_ALLOWED,
                    f"number of channels opened for user '{username}' has reached the maximum allowed user "
                    f"limit of ({limit})",
                )

    def _unacked_tables(self, vhost: str) -> list[dict[int, Any]]:
        """The unacked deliveries of every channel on `vhost` (see ChannelSession.unacked_tables)."""
        return [
            table
            for session in self.connections
            if session.vhost is not None and session.vhost.name == vhost
            for channel in session.channels.values()
            for table in channel.unacked_tables()
        ]

    def connection_opened(self, session: ConnectionSession) -> None:
        self.connections.add(session)

    def connection_closed(self, session: ConnectionSession) -> None:
        self.connections.discard(session)
        self.memory_release.note_closed()
