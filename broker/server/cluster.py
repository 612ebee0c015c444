"""A node's tasks in a cluster: its registration (a lease kept alive) and the watches that keep its views.

Started by run_node only when the configuration has a `cluster:` section; a single node runs none of it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

import trio

from leveret.broker.cluster.admin_sync import AdminChange, AdminView, seed_txns
from leveret.broker.cluster.etcd_ops import WatchEvent, WatchEvents, WatchSnapshot, prefix_end
from leveret.broker.cluster.metadata import Change, ClusterMetadata
from leveret.broker.cluster.state import ClusterState
from leveret.broker.server.etcd import EtcdClient, EtcdError
from leveret.broker.server.leadership import run_leadership
from leveret.broker.server.lease_thread import keep_lease_alive_in_thread
from leveret.broker.server.startup import StartError

log = logging.getLogger(__name__)

# How long a stopping node waits for etcd to take its lease back (others then see it leave at once).
_REVOKE_TIMEOUT = 1.0
# Between two attempts to register again while etcd cannot be reached.
_REGISTER_PAUSE = 0.5


class EtcdUnreachable(StartError):
    """No etcd member answered when the node started: said in one line, as any other start failure."""


async def check_etcd(cluster: ClusterState) -> None:
    """Fail the start at once, before recovery, when no etcd member answers."""
    etcd = cluster.config.etcd
    async with EtcdClient(etcd.endpoints, request_timeout=etcd.request_timeout) as client:
        try:
            await client.get_prefix(cluster.layout.nodes)
        except EtcdError as error:
            raise _unreachable(client, error) from None


def _unreachable(client: EtcdClient, error: EtcdError) -> EtcdUnreachable:
    endpoints = ", ".join(client.endpoints)
    return EtcdUnreachable(f"cannot reach etcd at {endpoints}: {error}; see cluster.etcd.endpoints")


class RangeView(Protocol):
    """A view of one etcd range, kept by `follow_range`."""

    def reset(self, kvs: list[Any], revision: int) -> None: ...

    def apply(self, events: list[WatchEvent], revision: int) -> None: ...


async def follow_range(
    client: EtcdClient, prefix: bytes, view: RangeView, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Read the range into `view`, then apply every change to it, for ever. Started once the first read
    is in."""
    try:
        snapshot = await client.get_prefix(prefix)
    except EtcdError as error:
        raise _unreachable(client, error) from None
    view.reset(snapshot.kvs, snapshot.revision)
    task_status.started()
    async for item in client.watch(prefix, prefix_end(prefix), snapshot.revision + 1):
        if isinstance(item, WatchSnapshot):
            view.reset(item.kvs, item.revision)
        elif isinstance(item, WatchEvents):
            view.apply(item.events, item.revision)


async def keep_registered(
    client: EtcdClient, cluster: ClusterState, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """This node's key, bound to a lease kept alive. Should the lease expire anyway (etcd unreachable for
    longer than its TTL), the node was dead to the cluster meanwhile: it registers again with a new one."""
    ttl = cluster.config.lease_ttl
    started = False
    while True:
        try:
            asked = trio.current_time()
            lease, granted = await client.lease_grant(ttl)
            try:
                cluster.leadership.lease_granted(lease, asked + (granted or ttl))
                cluster.metadata.lease = lease  # what this node's exclusive queues' records live by
                key, value = cluster.layout.node(cluster.name), cluster.registration(lease).encode()
                await client.put(key, value, lease=lease, retry=True)  # the same put twice is harmless
                if not started:
                    task_status.started()
                    started = True
                log.info("registered in the cluster as %s (lease %x, %d s)", cluster.name, lease, granted)
                for claim in cluster.metadata.exclusive_claims():  # none at the first registration
                    await client.txn(claim, retry=True)  # put only if absent: twice is harmless
                await keep_lease_alive_in_thread(
                    cluster.config.etcd,
                    lease,
                    granted or ttl,
                    renewed=functools.partial(cluster.leadership.lease_renewed, lease),
                )
                log.error("lost the cluster lease of %s: registering again", cluster.name)
            finally:
                with trio.move_on_after(_REVOKE_TIMEOUT) as scope:
                    scope.shield = True
                    try:
                        await client.lease_revoke(lease)
                    except EtcdError as error:
                        log.info("could not revoke lease %x: %s", lease, error)
        except EtcdError as error:
            if not started:
                raise _unreachable(client, error) from None
            log.error("cannot register %s in the cluster: %s; trying again", cluster.name, error)
            await trio.sleep(_REGISTER_PAUSE)


async def run_metadata_changes(
    client: EtcdClient, metadata: ClusterMetadata, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Run each change a client's method waits for as its etcd transaction, several at once.

    Every metadata txn may be retried: a declare creates only if absent and otherwise reads back (a retry
    finds its own record), a bind puts the same value again, deletes and reads are idempotent."""
    wakeup = trio.Event()

    def wake() -> None:
        wakeup.set()

    metadata.wake = wake
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            await wakeup.wait()
            wakeup = trio.Event()
            for change, done in metadata.take_requests():
                nursery.start_soon(_run_change, client, metadata, change, done)


async def _run_change(
    client: EtcdClient, metadata: ClusterMetadata, change: Change, done: Callable[[Change], None] | None
) -> None:
    try:
        result = await client.txn(change.txn, retry=True)
    except EtcdError as error:
        log.error("cluster metadata change on %r failed: %s", change.key, error)
        change.error = error
    else:
        metadata.completed(change, result)
    if done is not None:
        done(change)


async def seed_admin(client: EtcdClient, cluster: ClusterState) -> None:
    """Put the configuration's vhosts, users and permissions in etcd where they are absent (etcd's own
    records win: see broker/cluster/admin_sync.py); into an empty `admin/` range, everything the node
    holds."""
    try:
        empty = not (await client.get_prefix(cluster.layout.admin)).kvs
        # A cluster that never held them (upgraded from per-node users and vhosts): all this node has.
        seeds = cluster.admin.records() if empty else cluster.admin.seed()
        for txn in seed_txns(seeds):
            await client.txn(txn, retry=True)  # put only if absent: twice is harmless
    except EtcdError as error:
        raise _unreachable(client, error) from None


async def run_admin_changes(
    client: EtcdClient, view: AdminView, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Send each change of users, vhosts, permissions, limits or policies made on this node."""
    send, receive = trio.open_memory_channel[tuple[AdminChange, Callable[[], None]]](math.inf)
    view.send = lambda change, done: send.send_nowait((change, done))
    async with trio.open_nursery() as nursery:
        task_status.started()
        async for change, done in receive:
            nursery.start_soon(_run_admin_change, client, view, change, done)


async def _run_admin_change(
    client: EtcdClient, view: AdminView, change: AdminChange, done: Callable[[], None]
) -> None:
    """Its txns only put and delete, so running one twice after an ambiguous failure is harmless."""
    revisions = []
    try:
        for txn in change.txns:
            revisions.append((await client.txn(txn, retry=True)).revision)
    except EtcdError as error:
        log.error("cluster admin change failed: %s", error)
        change.error = error
    view.completed(change, revisions)
    done()


async def run_cluster(cluster: ClusterState, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Every cluster task of the node; started once it is registered and its views hold etcd's state."""
    etcd = cluster.config.etcd
    async with EtcdClient(etcd.endpoints, request_timeout=etcd.request_timeout) as client:
        async with trio.open_nursery() as nursery:
            await nursery.start(follow_range, client, cluster.layout.nodes, cluster.membership)
            # Vhosts before what is in them: a vhost's records are applied when the vhost appears.
            await seed_admin(client, cluster)
            await nursery.start(follow_range, client, cluster.layout.admin, cluster.admin)
            await nursery.start(run_admin_changes, client, cluster.admin)
            await nursery.start(follow_range, client, cluster.layout.meta, cluster.metadata)
            await nursery.start(run_metadata_changes, client, cluster.metadata)
            await nursery.start(keep_registered, client, cluster)
            await nursery.start(run_leadership, client, cluster, follow_range)
            task_status.started()
