"""The etcd client against a real 3-member etcd cluster: KV, txns, leases, watches across member loss."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from leveret.broker.cluster.etcd_ops import (
    Compare,
    Delete,
    Get,
    Put,
    Txn,
    WatchEvents,
    WatchSnapshot,
    prefix_end,
)
from leveret.broker.server.etcd import EtcdClient, EtcdError, EtcdUnavailable
from leveret.broker.server.local_cluster import EtcdCluster, free_ports
from tests.etcd_support import etcd_cluster


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Shared by the tests that kill no member; each keeps to keys of its own."""
    yield from etcd_cluster(tmp_path_factory.mktemp("etcd"))


@pytest.fixture
def fresh_etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """For a test that kills members."""
    yield from etcd_cluster(tmp_path)


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


async def test_put_get_delete_and_prefix(etcd: EtcdCluster) -> None:
    async with EtcdClient(etcd.endpoints) as client:
        revision = await client.put(b"/t/a", b"1")
        await client.put(b"/t/b", b"\x00binary\xff")
        await client.put(b"/u/c", b"3")
        kv = await client.get(b"/t/a")
        assert kv is not None and kv.value == b"1" and kv.mod_revision == revision == kv.create_revision
        listing = await client.get_prefix(b"/t/")
        assert [(kv.key, kv.value) for kv in listing.kvs] == [(b"/t/a", b"1"), (b"/t/b", b"\x00binary\xff")]
        assert listing.revision >= revision + 2
        assert await client.get(b"/t/missing") is None
        assert await client.delete(b"/t/", prefix_end(b"/t/")) == 2
        assert (await client.get_prefix(b"/t/")).kvs == []
        assert await client.delete(b"/t/a") == 0  # deleting again is harmless


async def test_txn_compare_create_then_read_back(etcd: EtcdCluster) -> None:
    key = b"/txn/record"

    def create(value: bytes) -> Txn:
        return Txn((Compare.absent(key),), (Put(key, value),), (Get(key),))

    async with EtcdClient(etcd.endpoints) as client:
        first = await client.txn(create(b"mine"), retry=True)
        assert first.succeeded and first.responses == [None]
        second = await client.txn(create(b"theirs"), retry=True)
        assert not second.succeeded
        [stored] = second.responses[0]  # type: ignore[misc]
        assert stored.value == b"mine" and stored.mod_revision == first.revision
        # Guarded by the revision we saw: a second writer with a stale view loses.
        update = Txn((Compare.unchanged_since(key, stored.mod_revision),), (Put(key, b"v2"),), (Get(key),))
        assert (await client.txn(update)).succeeded
        assert not (await client.txn(update)).succeeded
        both = Txn((Compare.holds(key, b"v2"),), (Delete(key), Get(key)))
        result = await client.txn(both)
        assert result.succeeded and result.responses == [1, []]


async def test_lease_expiry_and_keepalive(etcd: EtcdCluster) -> None:
    async with EtcdClient(etcd.endpoints) as client:
        short, ttl = await client.lease_grant(2)
        kept, _ = await client.lease_grant(2)
        assert ttl == 2
        await client.put(b"/lease/short", b"x", lease=short)
        await client.put(b"/lease/kept", b"y", lease=kept)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.keep_lease_alive, kept, 2)
            await trio.sleep(4.5)  # more than twice the TTL
            assert await client.get(b"/lease/short") is None
            assert await client.lease_keepalive(short) == 0
            assert (await client.get(b"/lease/kept")) is not None
            nursery.cancel_scope.cancel()
        await client.lease_revoke(kept)
        assert await client.get(b"/lease/kept") is None
        await client.lease_revoke(kept)  # revoking twice is harmless
        with pytest.raises(EtcdError):
            await client.put(b"/lease/x", b"x", lease=short)  # a lease that is gone


async def test_a_member_that_hangs_does_not_let_the_lease_deadline_lapse(etcd: EtcdCluster) -> None:
    """The first endpoint accepts connections and never answers. Keepalives leave it after half a TTL and
    carry on elsewhere, on time, so the deadline the node fences itself by stays ahead of the clock."""
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(functools.partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
        hanging = f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
        async with EtcdClient(etcd.endpoints) as granter, EtcdClient([hanging, *etcd.endpoints]) as client:
            asked = trio.current_time()
            lease, ttl = await granter.lease_grant(2)
            deadlines = [asked + ttl]
            lapsed = []
            renewing = trio.CancelScope()

            async def keep() -> None:
                with renewing:
                    await client.keep_lease_alive(lease, ttl, renewed=deadlines.append)

            nursery.start_soon(keep)
            stop = trio.current_time() + 2.5 * ttl
            while trio.current_time() < stop:
                if trio.current_time() >= max(deadlines):
                    lapsed.append(trio.current_time())
                await trio.sleep(0.05)
            renewing.cancel()
            await granter.lease_revoke(lease)
        assert held  # the hanging member was tried
        assert len(deadlines) > 4 and not lapsed
        nursery.cancel_scope.cancel()


async def test_rotation_over_a_dead_endpoint(fresh_etcd: EtcdCluster) -> None:
    etcd = fresh_etcd
    (dead,) = free_ports(1)  # nothing listens there
    async with EtcdClient([f"http://127.0.0.1:{dead}", *etcd.endpoints], request_timeout=1) as client:
        await client.put(b"/t/r", b"1")  # a put whose connection failed is retried elsewhere
        assert (await client.get(b"/t/r")) is not None
        etcd.kill(0)
        for _ in range(5):
            assert (await client.get(b"/t/r")) is not None
    async with EtcdClient([f"http://127.0.0.1:{dead}"], request_timeout=0.2) as lonely:
        with pytest.raises(EtcdUnavailable):
            await lonely.get(b"/t/r")


async def test_watch_survives_the_loss_of_its_member(fresh_etcd: EtcdCluster) -> None:
    etcd = fresh_etcd
    seen: list[tuple[str, bytes, bytes]] = []
    async with EtcdClient(etcd.endpoints, request_timeout=1) as writer, EtcdClient(etcd.endpoints) as watcher:
        start = await writer.put(b"/w/0", b"before")

        async def watch() -> None:
            async for item in watcher.watch(b"/w/", prefix_end(b"/w/"), start):
                assert isinstance(item, WatchEvents)
                seen.extend((e.kind, e.kv.key, e.kv.value) for e in item.events)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await writer.put(b"/w/1", b"a")
            await _until(lambda: len(seen) == 2)
            etcd.kill(watcher._current)  # kill -9 the member the watch streams from
            # While the watch moves to another member. The killed one may have been etcd's leader: a put
            # sent during the election can time out, and putting the same value twice is harmless.
            await writer.put(b"/w/2", b"b", retry=True)
            await writer.delete(b"/w/1")
            await _until(lambda: len(seen) == 4)
            nursery.cancel_scope.cancel()
    assert seen == [
        ("PUT", b"/w/0", b"before"),
        ("PUT", b"/w/1", b"a"),
        ("PUT", b"/w/2", b"b"),
        ("DELETE", b"/w/1", b""),
    ]


async def test_watch_from_a_compacted_revision_hands_over_the_range(etcd: EtcdCluster) -> None:
    async with EtcdClient(etcd.endpoints) as client:
        old = await client.put(b"/c/a", b"1")
        await client.put(b"/c/a", b"2")
        latest = await client.put(b"/c/b", b"3")
        await client._call("/v3/kv/compaction", {"revision": str(latest), "physical": True}, retry=True)
        with trio.fail_after(10):
            async for item in client.watch(b"/c/", prefix_end(b"/c/"), old):
                assert isinstance(item, WatchSnapshot)
                assert [(kv.key, kv.value) for kv in item.kvs] == [(b"/c/a", b"2"), (b"/c/b", b"3")]
                assert item.revision >= latest
                break


async def _until(condition: object, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.01)
