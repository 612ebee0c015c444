"""A follower's side of replication, in process: the handlers a leader's requests reach, fed real
payloads, with the replica file on disk (no sockets: the leader's shipping is tested on a real cluster
in interop/test_cluster_replication.py)."""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import pytest
import trio

from leveret.broker.cluster import replica_file
from leveret.broker.cluster.replica import (
    DELIVERED,
    ENQUEUE,
    LogEntry,
    ReplicaLog,
    encode_entries,
    encode_snapshot,
)
from leveret.broker.cluster.replica_file import ReplicaFile
from leveret.broker.node import Node
from leveret.broker.server.peers import Deferred, PeerLinks
from leveret.broker.server.replication import _APPEND_HEAD, Replication, _queue_head
from leveret.config import load_config

Q = ("/", "orders")

CLUSTER = """
cluster:
  nodes:
    - {name: a, amqp: "127.0.0.1:5701", peer: "127.0.0.1:25701"}
    - {name: b, amqp: "127.0.0.1:5702", peer: "127.0.0.1:25702"}
    - {name: c, amqp: "127.0.0.1:5703", peer: "127.0.0.1:25703"}
  etcd:
    endpoints: ["http://127.0.0.1:2379"]
"""


def follower(tmp_path: Path) -> Replication:
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER, encoding="utf-8")
    config = load_config(path, overrides={"cluster.node": "b", "data_dir": str(tmp_path / "b")})
    assert config.cluster is not None
    node = Node(config)
    replication = Replication(node, PeerLinks.from_config(config.cluster), tmp_path / "b")
    replication.load()
    return replication


def entries(epoch: int, first: int, count: int) -> list[LogEntry]:
    return [(epoch, (ENQUEUE, seq, "", "orders", b"\x00\x00", b"m%d" % seq, 0))
            for seq in range(first, first + count)]


def append(epoch: int, start: int, batch: list[LogEntry], truncate: int = -1) -> bytes:
    return _queue_head(Q, epoch) + _APPEND_HEAD.pack(0, start, truncate) + encode_entries(batch)


async def appended(replication: Replication, source: str, payload: bytes) -> bytes:
    """The append's reply: the handler applies at once and answers (deferred) once it has fsynced."""
    return await replication._append(source, payload).wait()


async def test_appends_are_synced_refused_when_stale_and_truncated_by_epoch(tmp_path: Path) -> None:
    replication = follower(tmp_path)
    end = await appended(replication, "a", append(5, 0, entries(5, 1, 4)))
    assert struct.unpack(">Q", end) == (4,)
    # Out of step: the leader must probe again.
    with pytest.raises(ValueError, match="append at 9"):
        await appended(replication, "a", append(5, 9, entries(5, 5, 1)))
    # A new leader (epoch 7) probes; the follower's last epoch is 5, which ends at 2 in its log.
    assert struct.unpack(">QQ", replication._probe("c", _queue_head(Q, 7))) == (4, 5)
    end = await appended(replication, "c", append(7, 2, [(7, (DELIVERED, 1))], truncate=2))
    assert struct.unpack(">Q", end) == (3,)
    # The deposed leader's epoch is refused from now on.
    with pytest.raises(ValueError, match="stale epoch"):
        await appended(replication, "a", append(5, 3, entries(5, 9, 1)))
    with pytest.raises(ValueError, match="stale epoch"):
        replication._probe("a", _queue_head(Q, 5))
    replica = replication.replicas[Q]
    assert [(seq, h.delivered) for seq, h in replica.state.held.items()] == [(1, True), (2, False)]
    assert replica.epochs == [(5, 0), (7, 2)]
    # What it acked is on disk: a restarted follower has it back.
    again = follower(tmp_path)
    back = again.replicas[Q]
    assert [(s, h.delivered) for s, h in back.state.held.items()] == [(1, True), (2, False)]
    assert back.end == 3 and back.epochs == replica.epochs and back.newest_epoch == 7


async def test_a_snapshot_replaces_the_replica(tmp_path: Path) -> None:
    replication = follower(tmp_path)
    await appended(replication, "a", append(5, 0, entries(5, 1, 3)))
    leader = ReplicaLog()
    leader.start_epoch(9)
    for epoch, record in entries(9, 10, 2):
        leader.append(epoch, record)
    end = await replication._snapshot("c", _queue_head(Q, 9) + encode_snapshot(
        leader.end, leader.epochs, leader.state))
    assert struct.unpack(">Q", end) == (2,)
    assert list(replication.replicas[Q].state.held) == [10, 11]
    loaded = replica_file.load(tmp_path / "b" / "replicas" / replica_file.file_name(*Q))
    assert loaded is not None and list(loaded[2].state.held) == [10, 11]


async def test_a_failed_write_acks_nothing_and_the_next_writes_the_whole_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replication = follower(tmp_path)
    await appended(replication, "a", append(5, 0, entries(5, 1, 2)))
    real_sync = ReplicaFile.sync

    def full_disk(self: ReplicaFile, work: tuple[bytes | None, bytes]) -> None:
        with open(self.path, "ab") as out:
            out.write((work[1] or b"")[:7])  # a torn piece, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ReplicaFile, "sync", full_disk)
    with pytest.raises(OSError):
        await appended(replication, "a", append(5, 2, entries(5, 3, 2)))
    monkeypatch.setattr(ReplicaFile, "sync", real_sync)
    end = await appended(replication, "a", append(5, 4, entries(5, 5, 1)))
    assert struct.unpack(">Q", end) == (5,)
    loaded = replica_file.load(tmp_path / "b" / "replicas" / replica_file.file_name(*Q))
    assert loaded is not None and list(loaded[2].state.held) == [1, 2, 3, 4, 5]


async def test_an_append_is_applied_at_once_and_answered_once_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One queue's slow fsync holds back neither another queue's append nor its own apply (the link's
    reader goes on); its reply waits for the fsync."""
    replication = follower(tmp_path)
    real_sync = ReplicaFile.sync
    release = threading.Event()

    def slow_for_orders(self: ReplicaFile, work: tuple[bytes | None, bytes]) -> None:
        if self.queue == Q[1]:
            release.wait(10)
        real_sync(self, work)

    monkeypatch.setattr(ReplicaFile, "sync", slow_for_orders)
    slow = replication._append("a", append(5, 0, entries(5, 1, 3)))
    assert replication.replicas[Q].end == 3  # applied before any fsync
    other = ("/", "invoices")
    quick = replication._append("a", _queue_head(other, 5) + _APPEND_HEAD.pack(0, 0, -1)
                                + encode_entries(entries(5, 1, 1)))
    answers: dict[str, bytes] = {}

    async def answer(name: str, deferred: Deferred) -> None:
        answers[name] = await deferred.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer, "slow", slow)
        nursery.start_soon(answer, "quick", quick)
        with trio.fail_after(10):
            while "quick" not in answers:
                await trio.sleep(0.01)
        assert "slow" not in answers  # still waiting for its fsync
        release.set()
    assert struct.unpack(">Q", answers["slow"]) == (3,) and struct.unpack(">Q", answers["quick"]) == (1,)
    loaded = replica_file.load(tmp_path / "b" / "replicas" / replica_file.file_name(*Q))
    assert loaded is not None and list(loaded[2].state.held) == [1, 2, 3]
