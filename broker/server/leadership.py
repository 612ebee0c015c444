"""The etcd side of per-queue leadership: feed broker/cluster/leadership.py and run the txns it asks for.

Three watched ranges feed it (`leader/`, `isr/`, and the queue records under `meta/`), and so do the
membership view and the node's lease (keep_registered). After each change, and every `_TICK` seconds
(a lease's deadline passes without any event), `decide` says what to do; campaigns and ISR changes run
as txns, several at once, each answer fed back; a pre-vote asks the replicas for their log ends over
the peer links (`ClusterState.log_positions`, replication's) and feeds them back the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from leveret.broker.cluster.etcd_ops import KeyValue, WatchEvent
from leveret.broker.cluster.leadership import (
    Campaign,
    ChangeInSync,
    Deposed,
    Elected,
    Leadership,
    PreVote,
    RevokeStale,
)
from leveret.broker.cluster.state import ClusterState
from leveret.broker.server.etcd import EtcdClient, EtcdError

log = logging.getLogger(__name__)

_TICK = 0.1

Follow = Callable[..., Awaitable[None]]  # broker/server/cluster.py's follow_range


class _Wakeup:
    def __init__(self) -> None:
        self.event = trio.Event()

    def __call__(self) -> None:
        self.event.set()

    async def wait(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self.event.wait()
        self.event = trio.Event()


class _KeysView:
    """The `leader/` or `isr/` range, for follow_range."""

    def __init__(self, state: Leadership, prefix: bytes, wake: _Wakeup) -> None:
        self.state, self.prefix, self.wake = state, prefix, wake

    def reset(self, kvs: list[KeyValue], revision: int) -> None:
        self.state.reset_keys(self.prefix, kvs)
        self.wake()

    def apply(self, events: list[WatchEvent], revision: int) -> None:
        self.state.apply_keys(events)
        self.wake()


class _QueuesView:
    """The queue records under `meta/`, for follow_range."""

    def __init__(self, state: Leadership, wake: _Wakeup) -> None:
        self.state, self.wake = state, wake

    def reset(self, kvs: list[KeyValue], revision: int) -> None:
        self.state.reset_queues(kvs)
        self.wake()

    def apply(self, events: list[WatchEvent], revision: int) -> None:
        self.state.apply_queues(events)
        self.wake()


async def run_leadership(
    client: EtcdClient, cluster: ClusterState, follow: Follow, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    state = cluster.leadership
    layout = cluster.layout
    wake = _Wakeup()
    heard = cluster.membership.on_change

    def membership_changed(name: str, alive: bool) -> None:
        heard(name, alive)
        state.membership_changed()
        wake()

    cluster.membership.on_change = membership_changed
    state.wake = wake

    async def run(effect: Campaign | ChangeInSync) -> None:
        try:
            result = await client.txn(effect.txn, retry=True)  # a second run only fails its compare
        except EtcdError as error:
            log.warning("leadership txn for queue %r in vhost %r failed: %s", effect.queue[1],
                        effect.queue[0], error)
            result = None
        state.txn_done(effect, result)
        if isinstance(effect, ChangeInSync) and result is not None and result.succeeded:
            cluster.in_sync_changed(effect.queue)  # confirms waiting for a member dropped may go now
        wake()

    async def prevote(effect: PreVote) -> None:
        positions = await cluster.log_positions(effect.queue, effect.replicas)
        if state.prevote_done(effect, positions, trio.current_time()):
            log.info("queue %r in vhost %r: pre-vote won with %s", effect.queue[1], effect.queue[0],
                     ", ".join(f"{node} {epoch}/{end}" for node, (epoch, end) in sorted(positions.items())))
        wake()

    async def revoke(lease: int) -> None:
        try:
            await client.lease_revoke(lease)
        except EtcdError as error:  # it expires by itself within lease_ttl anyway
            log.info("could not revoke the stale lease %x: %s", lease, error)

    async with trio.open_nursery() as nursery:
        await nursery.start(follow, client, layout.leaders, _KeysView(state, layout.leaders, wake))
        await nursery.start(follow, client, layout.in_sync, _KeysView(state, layout.in_sync, wake))
        await nursery.start(follow, client, layout.meta, _QueuesView(state, wake))
        task_status.started()
        while True:
            for effect in state.decide(trio.current_time()):
                if isinstance(effect, RevokeStale):
                    if effect.lease == state.lease:
                        log.warning("giving up lease %x: it outlived its deadline here, so this node's "
                                    "queues move as after an expiry", effect.lease)
                    else:
                        log.info("revoking lease %x, held by this node's former process", effect.lease)
                    nursery.start_soon(revoke, effect.lease)
                    continue
                if isinstance(effect, PreVote):
                    nursery.start_soon(prevote, effect)
                    continue
                vhost, queue = effect.queue
                if isinstance(effect, Elected):
                    log.info("leader of queue %r in vhost %r (epoch %d)", queue, vhost, effect.epoch)
                    cluster.role_changed(effect)
                elif isinstance(effect, Deposed):
                    log.warning("no longer leader of queue %r in vhost %r (epoch %d): %s",
                                queue, vhost, effect.epoch, effect.reason)
                    cluster.role_changed(effect)
                else:
                    if isinstance(effect, ChangeInSync):
                        log.info("queue %r in vhost %r: in-sync replicas now %s (epoch %d)",
                                 queue, vhost, ", ".join(effect.members), effect.epoch)
                    nursery.start_soon(run, effect)
            cluster.leaders_changed()  # queues follow their leaders (broker/cluster/remote.py)
            await wake.wait(_TICK)
