"""A new leader's queue built from a replica larger than the memory budget: it holds what the budget
allows and leaves the rest in the replica files as paged-out chunks, which the node's pager reads back
(through the queue's journal) as a local queue's, in order, every message flagged redelivered.

The node is the broker's own (`open_node`, with its pager); the pager's rounds run on the test's thread
(tests/test_paging.py's `drive`)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from leveret.broker.cluster import roles
from leveret.broker.cluster.confirms import ConfirmGate
from leveret.broker.cluster.replica import ENQUEUE, ReplicaLog, encode_entries
from leveret.broker.cluster.replica_file import ReplicaFile
from leveret.broker.cluster.replication import LeaderQueue, ReplicatedJournal
from leveret.broker.cluster.roles import QueueRoles, build_leader_queue
from leveret.broker.queues.paging import OVERHEAD, HeadLoading
from tests.test_paging import BODY, BUDGET, body, drive, start

COUNT = 1000  # about a megabyte: sixteen times the budget


def replica_on_disk(directory: Path) -> tuple[ReplicaLog, ReplicaFile]:
    log = ReplicaLog(tail_bodies=0)
    file = ReplicaFile(directory, "/", "q")
    for first in range(1, COUNT + 1, 100):
        batch = [(1, (ENQUEUE, seq, "", "q", b"\x00\x00", body(seq), 0)) for seq in range(first, first + 100)]
        start_offset = log.end
        for epoch, record in batch:
            log.append(epoch, record)
        positions: list[int] = []
        encoded = encode_entries(batch, positions)
        file.entries(encoded, [(record[1], at, start_offset + i)
                               for i, ((_, record), at) in enumerate(zip(batch, positions, strict=True))])
        work = file.take()
        file.sync(work)
        log.spill(work[2])
    return log, file


async def test_a_new_leaders_queue_reads_its_replica_back_within_the_budget(tmp_path: Path) -> None:
    node = start(tmp_path / "node")
    replicas = tmp_path / "replicas"
    replicas.mkdir()
    log, file = replica_on_disk(replicas)
    assert all(h.body is None for h in log.state.held.values())
    vhost = node.vhosts["/"]
    like = vhost.declare_queue("q", owner=None, durable=True, exclusive=False, auto_delete=False,
                               arguments={})
    leader = LeaderQueue(("/", "q"), 2, log, file, ConfirmGate(), ["b", "c"], time.time)
    built = build_leader_queue(vhost, like, log.state, ReplicatedJournal(leader), time.time())
    QueueRoles().lead(vhost, built)
    assert built.message_count == COUNT
    assert built.paged is not None and built.paged.chunks  # the rest stays in the replica files
    assert built.memory.used <= BUDGET + BODY + 2 + OVERHEAD  # the one that crosses it included
    got = []
    while True:
        entry = built.take()
        if isinstance(entry, HeadLoading):
            drive(node)  # the pager reads the next chunk back
            continue
        if entry is None:
            break
        got.append((entry.message.body, entry.redelivered))
        built.settle([entry.seq])
        assert built.memory.used <= BUDGET + node.pager.chunk_size * 3  # type: ignore[union-attr]
    assert got == [(body(seq), True) for seq in range(1, COUNT + 1)]


async def test_a_new_leader_reads_only_a_few_mib_back_at_its_election(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a whole backlog back in the election's step held the new leader's loop (and its lease's
    keepalives) for as long as that took: only ELECTION_READ is read then, the pager reads the rest."""
    monkeypatch.setattr(roles, "ELECTION_READ", 100 * 1024)
    node = start(tmp_path / "node", budget=64 * 1024 * 1024)  # room for all of it
    replicas = tmp_path / "replicas"
    replicas.mkdir()
    log, file = replica_on_disk(replicas)
    read: list[int] = []
    real_read = ReplicaFile.read

    def counted(self: ReplicaFile, locations: list[int]) -> list[object]:
        read.append(len(locations))
        return real_read(self, locations)  # type: ignore[return-value]

    monkeypatch.setattr(ReplicaFile, "read", counted)
    vhost = node.vhosts["/"]
    like = vhost.declare_queue("q", owner=None, durable=True, exclusive=False, auto_delete=False,
                               arguments={})
    leader = LeaderQueue(("/", "q"), 2, log, file, ConfirmGate(), ["b", "c"], time.time)
    built = build_leader_queue(vhost, like, log.state, ReplicatedJournal(leader), time.time())
    QueueRoles().lead(vhost, built)
    assert built.message_count == COUNT
    assert read and sum(read) <= 100 * 1024 // BODY + 1  # about 100 of the 1000
    assert built.paged is not None and built.paged.chunks
    got = []
    while True:
        entry = built.take()
        if isinstance(entry, HeadLoading):
            drive(node)
            continue
        if entry is None:
            break
        got.append(entry.message.body)
        built.settle([entry.seq])
    assert got == [body(seq) for seq in range(1, COUNT + 1)]
