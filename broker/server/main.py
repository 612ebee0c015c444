"""Run a whole node: recover what the store holds, then serve until SIGTERM/SIGINT."""

from __future__ import annotations

import functools
import json
import logging
import signal
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import trio

from leveret.amqp.constants import CONNECTION_FORCED
from leveret.amqp.errors import AMQPError, ConnectionLevelError
from leveret.broker.admin import AdminError
from leveret.broker.cluster.state import ClusterState
from leveret.broker.definitions import declarations, load_definitions_file, read_definitions_file
from leveret.broker.management.serializers import NODE_STATS, own_stats
from leveret.broker.management.server import bind_management, serve_management
from leveret.broker.management.through_cluster import through_cluster
from leveret.broker.node import Node
from leveret.broker.pager import NodePager, message_budget
from leveret.broker.persistence import Persistence
from leveret.broker.server.cluster import check_etcd, run_cluster
from leveret.broker.server.listener import serve_amqp_on
from leveret.broker.server.pager import run_pager
from leveret.broker.server.peers import PeerLinks, peer_address
from leveret.broker.server.persistence import run_group_commit
from leveret.broker.server.remote import run_remote
from leveret.broker.server.replication import Replication
from leveret.broker.server.resources import run_resource_monitor, total_memory
from leveret.broker.server.startup import (
    ListenerSetting,
    bind_hosts,
    cannot_use_data_dir,
    lock_data_dir,
    open_listeners,
)
from leveret.broker.server.timers import run_timers
from leveret.broker.server.tls import server_context
from leveret.broker.store import DefinitionsError
from leveret.broker.store.pages import PageFiles
from leveret.config import Config

log = logging.getLogger("leveret")

# How long a shutdown waits for clients to acknowledge connection.close before dropping them.
SHUTDOWN_GRACE = 2.0


def open_node(config: Config) -> Node:
    """A node with its store attached and its durable state recovered.

    Blocking, on the loop thread on purpose: nothing else runs yet, and recovery rebuilds queues whose
    timers read the loop's clock.
    """
    loaded = None if config.load_definitions is None else read_definitions_file(config.load_definitions)
    node = Node(config, clock=trio.current_time)
    persistence = Persistence(config.data_dir)
    node.attach_persistence(persistence)
    budget = message_budget(config.resources, total_memory())
    log.info("Message memory budget set to %d MiB (%d bytes)", budget >> 20, budget)
    pages = PageFiles(Path(config.data_dir) / "pages")
    node.attach_pager(NodePager(budget, pages, node.queues, persistence.store))
    started = trio.current_time()
    if node.cluster is not None:
        with node.cluster.metadata.quietly():  # etcd's snapshot, read next, decides what stays
            recovered = persistence.recover(node)
    else:
        recovered = persistence.recover(node)
    if config.load_definitions is not None and node.cluster is None:
        load_definitions_file(node, config.load_definitions, loaded)
    elif config.load_definitions is not None and node.cluster is not None:
        # What the file sets seeds etcd as the configuration does (absent keys only, at the join).
        before = node.cluster.admin.records()
        load_definitions_file(node, config.load_definitions, loaded, declare=False)
        node.cluster.admin.seed_with(before)
    log.info(
        "recovered %d messages from %s in %.2f s", recovered, config.data_dir, trio.current_time() - started
    )
    return node


async def start_node_tasks(nursery: trio.Nursery, node: Node) -> None:
    """The node's background tasks: group commit, paging, timers and the resource alarms' monitor."""
    if node.persistence is not None:
        await nursery.start(run_group_commit, node, node.persistence)
    if node.pager is not None:
        await nursery.start(run_pager, node.pager)
    await nursery.start(run_timers, node)
    await nursery.start(run_resource_monitor, node)


async def close_connections(node: Node) -> None:
    """Tell every client the broker is going away (320, as RabbitMQ does); give them a moment to answer."""
    shutdown = ConnectionLevelError(
        CONNECTION_FORCED, "broker forced connection closure with reason 'shutdown'"
    )
    for session in list(node.connections):
        session.close(shutdown)
    with trio.move_on_after(SHUTDOWN_GRACE):
        while node.connections:
            await trio.sleep(0.05)


AMQP = ListenerSetting("AMQP", "listeners.amqp", host_flag="--host", port_flag="--port")
AMQPS = ListenerSetting("AMQPS", "listeners.amqps")
MANAGEMENT = ListenerSetting("the management API", "listeners.management")
PEER = ListenerSetting("the peer links", "cluster.nodes[].peer")


@dataclass
class BoundListeners:
    """Every listener's sockets, bound before the store is opened."""

    amqp: list[trio.SocketListener]
    amqps: list[trio.SocketListener] = field(default_factory=list)
    management: list[socket.socket] = field(default_factory=list)
    peer: list[trio.SocketListener] = field(default_factory=list)  # a cluster node's

    def close(self) -> None:
        for listener in (*self.amqp, *self.amqps, *self.peer):
            listener.socket.close()
        for sock in self.management:
            sock.close()


async def bind_listeners(config: Config) -> BoundListeners:
    """Bind every configured listener, or raise StartError naming the one that failed."""
    amqp = config.listeners.amqp
    bound = BoundListeners(await open_listeners(AMQP, amqp.hosts, amqp.port))
    try:
        if config.listeners.amqps is not None:
            amqps = config.listeners.amqps
            bound.amqps = await open_listeners(AMQPS, amqps.hosts, amqps.port)
        management = config.listeners.management
        if management is not None:
            bound.management = await bind_hosts(
                MANAGEMENT, management.hosts, management.port, _bind_management, _close_sockets
            )
        if config.cluster is not None:
            host, port = peer_address(config.cluster)
            bound.peer = await open_listeners(PEER, (host,), port)
    except BaseException:
        bound.close()
        raise
    return bound


async def _bind_management(host: str, port: int) -> list[socket.socket]:
    return bind_management(host, port)


def _close_sockets(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def open_store(config: Config) -> Node:
    """`open_node`, with a data directory that cannot be used said in one line."""
    try:
        return open_node(config)
    except OSError as error:
        raise cannot_use_data_dir(config.data_dir, error) from None


async def run_node(config: Config) -> None:
    """Serve until SIGTERM/SIGINT. Nothing touches the store before every listener is bound: a start
    that fails (a port in use) leaves the clean-shutdown marker for the next one."""
    # Bad certificates are reported before a long recovery, not after.
    ssl_context = server_context(config.tls) if config.listeners.amqps is not None and config.tls else None
    if config.cluster is not None:
        await check_etcd(ClusterState(config.cluster))
    bound = await bind_listeners(config)
    try:
        data_dir_lock = lock_data_dir(config.data_dir)
        node = open_store(config)
    except BaseException:
        bound.close()
        raise
    with data_dir_lock:
        await serve_node(config, node, bound, ssl_context)


async def declare_loaded_definitions(node: Node, path: str) -> None:
    """A cluster node's load_definitions exchanges, queues and bindings, each through etcd as the same
    declaration over HTTP (those that exist are left as they are)."""
    definitions = read_definitions_file(path)
    try:
        for declaration in declarations(node, definitions):
            await through_cluster(node, declaration)
    except AdminError as exc:
        raise DefinitionsError(f"load_definitions file {path} cannot be imported: {exc.reason}") from None
    except AMQPError as exc:
        raise DefinitionsError(f"load_definitions file {path} cannot be imported: {exc.text}") from None


async def serve_node(
    config: Config, node: Node, bound: BoundListeners, ssl_context: ssl.SSLContext | None
) -> None:
    # Signals are caught before anything serves: a SIGTERM during the start waits for it, then stops
    # the node cleanly (the default action would end the process without the clean-shutdown marker).
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await start_node_tasks(nursery, node)
            if node.cluster is not None:
                links = PeerLinks.from_config(node.cluster.config)
                # Replicas are read back before leadership can make this node a leader.
                replication = Replication(node, links, Path(config.data_dir))
                replication.load()
                node.cluster.role_changed = replication.role_changed
                node.cluster.in_sync_changed = replication.in_sync_changed
                node.cluster.log_positions = replication.positions
                node.cluster.leader_journal = replication.leader_journal
                await nursery.start(replication.run)
                # Registered, and holding the cluster's state, before the first client is served.
                await nursery.start(run_cluster, node.cluster)
                node.cluster.peer_status = links.status
                node.cluster.ask_node = links.request
                started = trio.current_time()
                links.handle(
                    NODE_STATS,
                    lambda source, payload: json.dumps(
                        own_stats(node, int((trio.current_time() - started) * 1000))
                    ).encode(),
                )
                await nursery.start(run_remote, node, links)
                await nursery.start(links.run, bound.peer)
                if config.load_definitions is not None:
                    await declare_loaded_definitions(node, config.load_definitions)
            await nursery.start(serve_amqp_on, node, bound.amqp)
            if bound.amqps and ssl_context is not None:
                await nursery.start(serve_amqp_on, node, bound.amqps, ssl_context)
            management = config.listeners.management
            if management is not None:
                await nursery.start(
                    functools.partial(serve_management, sockets=bound.management),
                    node, management.hosts, management.port,
                )
            log.info("Server startup complete")  # RabbitMQ's words: the node serves from here on
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                await close_connections(node)
                nursery.cancel_scope.cancel()
                break
    # Every task has stopped: nothing appends any more. Blocking, and the last thing the node does.
    if node.persistence is not None:
        node.persistence.close()
