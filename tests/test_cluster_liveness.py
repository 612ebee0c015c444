"""Node liveness through etcd: a lease per node kept alive, and a membership view from a watch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from leveret.broker.cluster.leadership import Deposed, Elected
from leveret.broker.cluster.records import QueueRecord
from leveret.broker.cluster.state import ClusterState
from leveret.broker.server.cluster import run_cluster
from leveret.broker.server.etcd import EtcdClient
from leveret.broker.server.local_cluster import EtcdCluster
from leveret.config import Cluster, ClusterNode, Etcd
from tests.etcd_support import etcd_cluster


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    yield from etcd_cluster(tmp_path_factory.mktemp("etcd"))


def cluster_state(etcd: EtcdCluster, name: str, prefix: str) -> ClusterState:
    nodes = tuple(
        ClusterNode(n, f"127.0.0.1:{5700 + i}", f"127.0.0.1:{25700 + i}") for i, n in enumerate("abc")
    )
    return ClusterState(Cluster(nodes, Etcd(tuple(etcd.endpoints), prefix=prefix), node=name, lease_ttl=2))


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def test_nodes_see_each_other_and_a_clean_stop(etcd: EtcdCluster) -> None:
    a, b = cluster_state(etcd, "a", "/live1/"), cluster_state(etcd, "b", "/live1/")
    async with trio.open_nursery() as nursery:
        await nursery.start(run_cluster, a)
        with trio.CancelScope() as b_scope:
            async with trio.open_nursery() as b_nursery:
                await b_nursery.start(run_cluster, b)
                await until(lambda: a.membership.alive_nodes() == ["a", "b"])
                assert b.membership.alive_nodes() == ["a", "b"]
                left = trio.current_time()
                b_scope.cancel()  # a clean stop revokes the lease: the others see it at once
        await until(lambda: a.membership.alive_nodes() == ["a"], timeout=2)
        assert trio.current_time() - left < 1.5  # well before the 2 s lease would expire
        nursery.cancel_scope.cancel()


async def test_a_node_whose_lease_expires_is_dead_to_the_cluster(etcd: EtcdCluster) -> None:
    a = cluster_state(etcd, "a", "/live2/")
    async with EtcdClient(etcd.endpoints) as client, trio.open_nursery() as nursery:
        await nursery.start(run_cluster, a)
        # "c" registers as a node does, then goes silent: no keepalive, as after kill -9 or SIGSTOP.
        lease, _ = await client.lease_grant(2)
        await client.put(a.layout.node("c"), b"{}", lease=lease)
        await until(lambda: a.membership.is_alive("c"))
        silent = trio.current_time()
        await until(lambda: not a.membership.is_alive("c"), timeout=6)
        assert 1.5 < trio.current_time() - silent < 4.5
        assert a.membership.alive_nodes() == ["a"]  # its own lease is kept alive meanwhile
        await trio.sleep(2.5)
        assert a.membership.alive_nodes() == ["a"]
        nursery.cancel_scope.cancel()


async def test_a_leader_whose_keepalives_are_answered_late_leads_again(
    etcd: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loaded machine: for a while every keepalive reaches etcd (the lease, and the leader key, live)
    but its answer comes after the TTL, so the leader gives its queues up (it cannot know the lease
    lives). Once answers come in time again it gives that lease up and leads them again under a new one,
    with a new epoch that every node sees. Before, it stayed deposed behind its own live key: no other
    node campaigns, and every call to it was refused."""
    late = False
    keepalive = EtcdClient.lease_keepalive

    async def slow_keepalive(self: EtcdClient, lease: int, **options: Any) -> int:
        remaining = await keepalive(self, lease, **options)
        if late:
            await trio.sleep(3)  # renewed at etcd, answered after the 2 s TTL
        return remaining

    monkeypatch.setattr(EtcdClient, "lease_keepalive", slow_keepalive)
    a = cluster_state(etcd, "a", "/late1/")

    async def own_log_only(queue: object, nodes: tuple[str, ...]) -> dict[str, tuple[int, int]]:
        return {"a": (0, 0)}  # the queue's only replica, with nothing written: it wins its pre-vote

    a.log_positions = own_log_only  # no replication here to answer a pre-vote
    roles: list[Elected | Deposed] = []
    a.role_changed = roles.append
    queue = ("/", "orders")
    async with EtcdClient(etcd.endpoints) as client, trio.open_nursery() as nursery:
        await nursery.start(run_cluster, a)
        record = QueueRecord("orders", True, False, "{}", ("a",), "a")
        await client.put(a.layout.queue(*queue), record.encode())
        await until(lambda: queue in a.leadership.led)
        late = True
        await until(lambda: queue not in a.leadership.led, timeout=5)
        late = False
        await until(lambda: queue in a.leadership.led, timeout=15)
        assert [type(effect) for effect in roles] == [Elected, Deposed, Elected]
        assert roles[2].epoch > roles[0].epoch  # a new key: other nodes' consumers re-attach
        assert "lease may have lapsed" in roles[1].reason  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def leading_orders(
    etcd: EtcdCluster, prefix: str, nursery: trio.Nursery
) -> tuple[ClusterState, list[Any]]:
    """Node "a", sole replica and leader of queue "orders"; every role change it makes is listed."""
    a = cluster_state(etcd, "a", prefix)

    async def own_log_only(queue: object, nodes: tuple[str, ...]) -> dict[str, tuple[int, int]]:
        return {"a": (0, 0)}  # the queue's only replica, with nothing written: it wins its pre-vote

    a.log_positions = own_log_only  # no replication here to answer a pre-vote
    roles: list[Elected | Deposed] = []
    a.role_changed = roles.append
    await nursery.start(run_cluster, a)
    async with EtcdClient(etcd.endpoints) as client:
        record = QueueRecord("orders", True, False, "{}", ("a",), "a")
        await client.put(a.layout.queue("/", "orders"), record.encode())
    await until(lambda: ("/", "orders") in a.leadership.led)
    return a, roles


async def test_a_leader_whose_loop_stalls_for_a_ttl_keeps_its_lease(etcd: EtcdCluster) -> None:
    """A starved machine: the loop runs nothing for 2.6 s (more than the 2 s TTL), three times. The
    keepalives go out from their own thread meanwhile, so the node keeps its lease and its queue.
    Before, each stall let the lease lapse and the queue moved."""
    async with trio.open_nursery() as nursery:
        a, roles = await leading_orders(etcd, "/stall1/", nursery)
        lease = a.leadership.lease
        for _ in range(3):
            await trio.sleep(0.7)
            time.sleep(2.6)
        await trio.sleep(0.5)
        assert [type(effect) for effect in roles] == [Elected]
        assert a.leadership.lease == lease and ("/", "orders") in a.leadership.led
        nursery.cancel_scope.cancel()


async def test_a_leader_whose_loop_is_stuck_for_long_gives_its_lease_up(etcd: EtcdCluster) -> None:
    """A loop stuck for 6 s, three TTLs: the thread stops renewing once the loop's heartbeat is a TTL old,
    so the lease lapses as if the node were dead, and the node leads again under a new lease."""
    async with trio.open_nursery() as nursery:
        a, roles = await leading_orders(etcd, "/stall2/", nursery)
        lease = a.leadership.lease
        time.sleep(6)
        await until(lambda: len(roles) >= 3, timeout=15)
        assert [type(effect) for effect in roles] == [Elected, Deposed, Elected]
        assert "lease may have lapsed" in roles[1].reason  # type: ignore[union-attr]
        assert a.leadership.lease != lease
        nursery.cancel_scope.cancel()
