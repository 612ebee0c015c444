"""A follower's side of replication, in process: the handlers a leader's requests reach, fed real
payloads, with the replica file on disk (no sockets: the leader's shipping is tested on a real cluster
in interop/test_cluster_replication.py)."""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path

import pytest
import trio

from leveret.broker.cluster import replica_file
from leveret.broker.cluster.replica import (
    DELIVERED,
    ENQUEUE,
    SETTLED,
    Held,
    LogEntry,
    ReplicaLog,
    ReplicaState,
    encode_entries,
    encode_messages,
    encode_snapshot_head,
    location,
)
from leveret.broker.cluster.replica_file import ReplicaFile, stem
from leveret.broker.cluster.replication import LeaderQueue
from leveret.broker.node import Node
from leveret.broker.server.peers import Deferred, PeerLinks
from leveret.broker.server.replication import (
    _APPEND_HEAD,
    _FIRST,
    _LAST,
    Replication,
    _Leading,
    _queue_head,
)
from leveret.broker.server.startup import StartError
from leveret.config import load_config
from tests.peer_support import listen, start_node, wait_up

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


def follower(tmp_path: Path, name: str = "b", links: PeerLinks | None = None, extra: str = "") -> Replication:
    path = tmp_path / f"cluster-{name}.yaml"
    path.write_text(CLUSTER + extra, encoding="utf-8")
    config = load_config(path, overrides={"cluster.node": name, "data_dir": str(tmp_path / name)})
    assert config.cluster is not None
    node = Node(config)
    replication = Replication(node, links or PeerLinks.from_config(config.cluster), tmp_path / name)
    replication.load()
    return replication


def entries(epoch: int, first: int, count: int, size: int = 0) -> list[LogEntry]:
    return [(epoch, (ENQUEUE, seq, "", "orders", b"\x00\x00", body(seq, size), 0))
            for seq in range(first, first + count)]


def body(seq: int, size: int = 0) -> bytes:
    return (b"m%d." % seq).ljust(size, b"x")


def load_again(tmp_path: Path) -> ReplicaLog:
    loaded = replica_file.load(tmp_path / "b" / "replicas", stem(*Q),
                               replica_file.generations(tmp_path / "b" / "replicas")[stem(*Q)][-1])
    assert loaded is not None
    return loaded[2]


def snapshot_parts(leader: ReplicaLog, per_part: int) -> list[bytes]:
    """The leader's state as `repl.snapshot` requests of `per_part` messages each."""
    held = list(leader.state.held.items())
    parts = []
    for start in range(0, max(len(held), 1), per_part):
        flags = (_FIRST if start == 0 else 0) | (_LAST if start + per_part >= len(held) else 0)
        head = encode_snapshot_head(leader.end, leader.epochs, leader.state) if start == 0 else b""
        messages = encode_messages(((seq, h.exchange, h.routing_key, h.properties_raw, h.body, h.deadline),
                                    h.delivered, h.returns, h.dead_lettering)  # type: ignore[misc]
                                   for seq, h in held[start:start + per_part])
        parts.append(_queue_head(Q, 9) + bytes([flags]) + head + messages)
    return parts


def append(epoch: int, start: int, batch: list[LogEntry], truncate: int = -1, epoch_start: int = 0) -> bytes:
    return _queue_head(Q, epoch) + _APPEND_HEAD.pack(epoch_start, start, truncate) + encode_entries(batch)


async def appended(replication: Replication, source: str, payload: bytes) -> bytes:
    """An append handled, then its reply once an fsync covers it (what the peer link sends back)."""
    return await replication._append(source, payload).wait()


async def test_appends_are_synced_refused_when_stale_and_truncated_by_epoch(tmp_path: Path) -> None:
    replication = follower(tmp_path)
    end = await appended(replication, "a", append(5, 0, entries(5, 1, 4)))
    assert struct.unpack(">Q", end) == (4,)
    # Out of step: the leader must probe again.
    with pytest.raises(ValueError, match="append at 9"):
        await appended(replication, "a", append(5, 9, entries(5, 5, 1)))
    # A new leader (epoch 7) probes; the follower's last epoch is 5, which ends at 2 in its log.
    assert struct.unpack(">QQQ", replication._probe("c", _queue_head(Q, 7))) == (4, 5, 0)
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


async def test_a_new_epoch_counts_only_once_the_follower_holds_the_log_before_it(tmp_path: Path) -> None:
    """A pre-vote compares (last epoch, end): a follower that recorded its leader's epoch while still
    missing older entries would look newer than a replica that has them."""
    replication = follower(tmp_path)
    position = struct.Struct(">QQ")
    await appended(replication, "a", append(5, 0, entries(5, 1, 4)))
    # The leader of epoch 7 began at offset 6 (entries 4 and 5 are of epoch 5); a batch ends at 5.
    await appended(replication, "c", append(7, 4, entries(5, 5, 1), epoch_start=6))
    assert position.unpack(replication._position("x", _queue_head(Q, 0))) == (5, 5)
    assert replication.replicas[Q].newest_epoch == 7  # epoch 5's leader is refused all the same
    await appended(replication, "c", append(7, 5, entries(5, 6, 1), epoch_start=6))
    assert position.unpack(replication._position("x", _queue_head(Q, 0))) == (7, 6)
    await appended(replication, "c", append(7, 6, entries(7, 7, 1), epoch_start=6))
    assert replication.replicas[Q].epochs == [(5, 0), (7, 6)]
    assert position.unpack(replication._position("x", _queue_head(("/", "other"), 0))) == (0, 0)


async def test_a_snapshot_replaces_the_replica(tmp_path: Path) -> None:
    replication = follower(tmp_path)
    await appended(replication, "a", append(5, 0, entries(5, 1, 3)))
    leader = ReplicaLog()
    leader.start_epoch(9)
    for epoch, record in entries(9, 10, 2):
        leader.append(epoch, record)
    for part in snapshot_parts(leader, 1):
        end = await replication._snapshot("c", part)
    assert struct.unpack(">Q", end) == (2,)
    assert list(replication.replicas[Q].state.held) == [10, 11]
    assert list(load_again(tmp_path).state.held) == [10, 11]
    # Only the new generation is left: the old replica's messages are gone with it.
    assert len(replica_file.generations(tmp_path / "b" / "replicas")[stem(*Q)]) == 1


async def test_a_failed_write_acks_nothing_and_the_next_writes_the_whole_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replication = follower(tmp_path)
    await appended(replication, "a", append(5, 0, entries(5, 1, 2)))
    real_sync = ReplicaFile.sync

    def full_disk(self: ReplicaFile, work: replica_file.Work) -> None:
        with open(self.path, "ab") as out:
            out.write((work[1] or b"")[:7])  # a torn piece, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ReplicaFile, "sync", full_disk)
    with pytest.raises(OSError):
        await appended(replication, "a", append(5, 2, entries(5, 3, 2)))
    monkeypatch.setattr(ReplicaFile, "sync", real_sync)
    end = await appended(replication, "a", append(5, 4, entries(5, 5, 1)))
    assert struct.unpack(">Q", end) == (5,)
    back = load_again(tmp_path)
    assert list(back.state.held) == [1, 2, 3, 4, 5]
    found = replication.files[Q].read([h.at for h in back.state.held.values()])
    assert [m[4] for m in found if m is not None] == [body(seq) for seq in range(1, 6)]


SMALL_BUDGET = """
resources:
  message_memory_budget: 1MiB
"""


async def test_a_follower_keeps_its_messages_on_disk_not_in_memory(tmp_path: Path) -> None:
    """Under a 1 MiB budget a follower that acked 8 MiB holds no body in memory but its tail's newest
    eighth of the budget; every message reads back from its files, in order, after a restart too, and
    a truncation by a new leader keeps them on disk."""
    replication = follower(tmp_path)
    replication._tail_bodies = lambda: (1 << 20) // 8  # type: ignore[method-assign]  # the node's pager's
    replica = replication.replicas.setdefault(Q, ReplicaLog(tail_bodies=(1 << 20) // 8))
    size, count = 8 * 1024, 1024
    for start in range(0, count, 64):
        await appended(replication, "a", append(5, start, entries(5, start + 1, 64, size)))
    resident = sum(len(h.body) for h in replica.state.held.values() if h.body is not None)
    assert resident == 0
    whole = sum(len(record[5]) for _, record in replica.tail if record[0] == ENQUEUE)
    assert whole <= (1 << 20) // 8 + size
    file = replication.files[Q]
    found = file.read([h.at for h in replica.state.held.values()])
    assert [m[4] for m in found if m is not None] == [body(seq, size) for seq in range(1, count + 1)]
    # A new leader truncates the last 10 entries away: what is left is still found on disk.
    await appended(replication, "c", append(7, count - 10, [(7, (SETTLED, [1]))], truncate=count - 10))
    assert list(replica.state.held) == list(range(2, count - 9))
    assert all(h.body is None for h in replica.state.held.values())
    back = load_again(tmp_path)
    assert [(s, h.at) for s, h in back.state.held.items()] == [
        (s, h.at) for s, h in replica.state.held.items()]


async def test_compaction_starts_a_generation_and_old_ones_go_with_their_messages(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER + "  replica_log_entries: 50\n", encoding="utf-8")
    config = load_config(path, overrides={"cluster.node": "b", "data_dir": str(tmp_path / "b")})
    assert config.cluster is not None
    replication = Replication(Node(config), PeerLinks.from_config(config.cluster), tmp_path / "b")
    replication.load()
    directory = tmp_path / "b" / "replicas"
    for start in range(0, 200, 20):
        await appended(replication, "a", append(5, start, entries(5, start + 1, 20, 100)))
    replica = replication.replicas[Q]
    assert replica.base > 0 and len(replica.state.held) == 200
    kept = replica_file.generations(directory)[stem(*Q)]
    assert len(kept) > 1  # the first messages are still in the first generations
    # Everything settled, then compacted: only the newest generation is left.
    await appended(replication, "a", append(5, replica.end, [(5, (SETTLED, list(range(1, 201))))]))
    for start in range(200, 260, 20):
        await appended(replication, "a", append(5, replica.end, entries(5, start + 1, 20, 100)))
    kept = replica_file.generations(directory)[stem(*Q)]
    assert len(kept) <= 2 and kept[-1] == replication.files[Q].generation
    back = load_again(tmp_path)
    assert list(back.state.held) == list(range(201, 261))
    found = replication.files[Q].read([h.at for h in back.state.held.values()])
    assert [m[4] for m in found if m is not None] == [body(seq, 100) for seq in range(201, 261)]


async def test_a_streamed_snapshot_of_many_messages_lands_on_disk(tmp_path: Path) -> None:
    replication = follower(tmp_path)
    leader = ReplicaLog()
    leader.start_epoch(9)
    for epoch, record in entries(9, 1, 300, 1000):
        leader.append(epoch, record)
    leader.append(9, (DELIVERED, 5))
    for part in snapshot_parts(leader, 64):
        end = await replication._snapshot("c", part)
    replica = replication.replicas[Q]
    assert struct.unpack(">Q", end) == (301,) and list(replica.state.held) == list(range(1, 301))
    assert all(h.body is None for h in replica.state.held.values()) and replica.state.held[5].delivered
    found = replication.files[Q].read([h.at for h in replica.state.held.values()])
    assert [m[4] for m in found if m is not None] == [body(seq, 1000) for seq in range(1, 301)]
    assert list(load_again(tmp_path).state.held) == list(range(1, 301))
    # A part out of turn (no snapshot begun) is refused.
    with pytest.raises(ValueError, match="without its beginning"):
        await replication._snapshot("c", snapshot_parts(leader, 64)[1])


def counting_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real_sync = ReplicaFile.sync

    def sync(self: ReplicaFile, work: replica_file.Work) -> None:
        calls.append(len(work[1]))
        real_sync(self, work)

    monkeypatch.setattr(ReplicaFile, "sync", sync)
    return calls


async def test_pipelined_appends_share_an_fsync_and_each_reply_says_its_own_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replication = follower(tmp_path)
    syncs = counting_syncs(monkeypatch)
    # Three appends handled back to back, as the link's reader does while their fsyncs are pending.
    pending = [replication._append("a", append(5, 0, entries(5, 1, 2))),
               replication._append("a", append(5, 2, entries(5, 3, 3))),
               replication._append("a", append(5, 5, entries(5, 6, 1)))]
    # Answered in any order (the leader takes each reply as "durable below this end").
    assert [struct.unpack(">Q", await answer.wait()) for answer in reversed(pending)] == [(6,), (5,), (2,)]
    assert len(syncs) == 1  # one group fsync covered all three
    assert list(load_again(tmp_path).state.held) == [1, 2, 3, 4, 5, 6]
    # An append out of step is refused at once, before any fsync (the leader probes again).
    with pytest.raises(ValueError, match="append at 7, replica ends at 6"):
        replication._append("a", append(5, 7, entries(5, 8, 1)))


async def test_appends_in_flight_when_a_new_leader_truncates_are_not_acknowledged(tmp_path: Path) -> None:
    replication = follower(tmp_path)
    assert struct.unpack(">Q", await appended(replication, "a", append(5, 0, entries(5, 1, 2)))) == (2,)
    # The old leader's next two appends are applied, their fsync still to come...
    in_flight = [replication._append("a", append(5, 2, entries(5, 3, 2))),
                 replication._append("a", append(5, 4, entries(5, 5, 1)))]
    # ...when a new leader (epoch 8, whose log diverges at 3) truncates the follower and appends.
    assert struct.unpack(">QQQ", replication._probe("c", _queue_head(Q, 8))) == (5, 5, 0)
    new = replication._append("c", append(8, 3, [(8, (DELIVERED, 1))], truncate=3))
    assert struct.unpack(">Q", await new.wait()) == (4,)
    # The end 5 the old appends reached counts entries no longer in the log: both are refused.
    for answer in in_flight:
        with pytest.raises(ValueError, match="truncated"):
            await answer.wait()
    replica = replication.replicas[Q]
    assert [(s, h.delivered) for s, h in replica.state.held.items()] == [(1, True), (2, False), (3, False)]


def other_entries(epoch: int, first: int, count: int) -> list[LogEntry]:
    """Enqueues of the same seqs as `entries`, with other messages (a new leader's own)."""
    return [(epoch, (ENQUEUE, seq, "", "orders", b"\x00\x00", b"new leader's %d" % seq, 0))
            for seq in range(first, first + count)]


def bodies_on_disk(replication: Replication) -> dict[int, bytes]:
    """Each held message as its replica file has it where the replica locates it."""
    held = replication.replicas[Q].state.held
    assert all(h.body is None for h in held.values())  # every one is on disk
    found = replication.files[Q].read([h.at for h in held.values()])
    return {seq: (m[4] if m is not None and m[0] == seq else None)
            for seq, m in zip(held, found, strict=True)}


@pytest.mark.parametrize("old_write", ["pending", "in a worker thread"])
async def test_a_seq_a_new_leader_enqueues_again_is_read_back_as_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old_write: str
) -> None:
    """The old leader's last enqueues reach the follower but not a majority; the new leader truncates
    them and enqueues its own messages under the same seqs. The write of the old entries, still to
    come or under way, must not locate the new leader's seqs at the old messages: an election would
    then serve a message never confirmed in place of one that was (and lose that one)."""
    replication = follower(tmp_path)
    await appended(replication, "a", append(5, 0, entries(5, 1, 4)))
    writing, release = threading.Event(), threading.Event()
    real_sync = ReplicaFile.sync

    def slow_sync(self: ReplicaFile, work: replica_file.Work) -> None:
        writing.set()
        release.wait(10)
        real_sync(self, work)

    old = replication._append("a", append(5, 4, entries(5, 5, 2)))
    refused: list[str] = []

    async def old_answer() -> None:
        with pytest.raises(ValueError, match="truncated") as error:
            await old.wait()
        refused.append(str(error.value))

    async with trio.open_nursery() as nursery:
        if old_write == "in a worker thread":
            monkeypatch.setattr(ReplicaFile, "sync", slow_sync)
            nursery.start_soon(old_answer)
            assert await trio.to_thread.run_sync(writing.wait, 10)
            monkeypatch.setattr(ReplicaFile, "sync", real_sync)
        replication._probe("c", _queue_head(Q, 7))
        new = replication._append("c", append(7, 4, other_entries(7, 5, 2), truncate=4, epoch_start=4))
        release.set()
        if old_write == "pending":
            nursery.start_soon(old_answer)
        assert struct.unpack(">Q", await new.wait()) == (6,)
    assert len(refused) == 1
    expected = {**{seq: body(seq) for seq in range(1, 5)}, 5: b"new leader's 5", 6: b"new leader's 6"}
    assert bodies_on_disk(replication) == expected
    assert bodies_on_disk(follower(tmp_path)) == expected  # and after a restart


async def test_a_stale_epoch_mid_pipeline_is_refused_from_then_on(tmp_path: Path) -> None:
    replication = follower(tmp_path)
    in_flight = [replication._append("a", append(5, 0, entries(5, 1, 2))),
                 replication._append("a", append(5, 2, entries(5, 3, 2)))]
    # A newer leader makes itself known (its probe) before those fsyncs answer: nothing is truncated
    # (it continues from the follower's end), but the old leader's replies are refused as stale...
    assert struct.unpack(">QQQ", replication._probe("c", _queue_head(Q, 6))) == (4, 5, 0)
    for answer in in_flight:
        with pytest.raises(ValueError, match="stale epoch"):
            await answer.wait()
    # ...as is its next append, while the new leader's goes on from the same end.
    with pytest.raises(ValueError, match="stale epoch"):
        replication._append("a", append(5, 4, entries(5, 5, 1)))
    assert struct.unpack(">Q", await appended(replication, "c", append(6, 4, [(6, (DELIVERED, 1))]))) == (5,)
    # What was refused as an answer is still held (and durable): refusing only kept the old leader from
    # counting it.
    again = follower(tmp_path)
    assert list(again.replicas[Q].state.held) == [1, 2, 3, 4] and again.replicas[Q].end == 5


def test_a_replica_file_of_another_format_stops_the_node_and_is_left_as_it_is(tmp_path: Path) -> None:
    """A file whose header has no format (a build before FORMAT 2) or another one is never read as this
    build's records: the node does not start, and says which file and both formats."""
    directory = tmp_path / "b" / "replicas"
    directory.mkdir(parents=True)
    path = replica_file.generation_path(directory, stem(*Q), 1)
    for header in ({"vhost": "/", "queue": "orders"}, {"vhost": "/", "queue": "orders", "format": 7}):
        content = (replica_file._frame(replica_file.HEADER, json.dumps(header).encode())
                   + replica_file._frame(replica_file.ENTRIES, encode_entries(entries(3, 1, 2))))
        path.write_bytes(content)
        found = header.get("format", 1)
        with pytest.raises(replica_file.ReplicaFormatError, match=f"is in format {found}, this build reads"):
            replica_file.load(directory, stem(*Q), 1)
        with pytest.raises(StartError) as refused:
            follower(tmp_path)
        assert str(refused.value).startswith(
            f"replica file {path} is in format {found}, this build reads format {replica_file.FORMAT}: "
            "start the build that wrote it, or move")
        assert path.read_bytes() == content


def test_this_builds_replica_files_say_their_format(tmp_path: Path) -> None:
    file = ReplicaFile(tmp_path, *Q)
    file.sync(file.take())
    first = next(replica_file._frames(open(file.path, "rb")))
    assert first[1] == replica_file.HEADER
    assert json.loads(first[2]) == {"vhost": "/", "queue": "orders", "format": replica_file.FORMAT}
    assert replica_file.FORMAT > 1  # 1 was every build before session 5's records, which read them wrong


async def test_a_follower_compacted_past_where_its_log_parts_from_the_new_leaders_gets_a_snapshot(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Issue 10's stall: the deposed leader b had compacted its log at its end, past entries of its epoch
    that the new leader a never got. Kafka's rule says truncate b to where epoch 5 ends on a, which is
    below b's base: b can only refuse that append, and a probed again and sent the same one for ever
    (its confirms waiting for b, in the ISR). a must send b a snapshot instead."""
    listener_a, port_a = await listen()
    listener_b, port_b = await listen()
    addresses = {"a": ("127.0.0.1", port_a), "b": ("127.0.0.1", port_b)}
    links_a = await start_node(nursery, "a", addresses, listener_a, peer_timeout=5.0)
    links_b = await start_node(nursery, "b", addresses, listener_b, peer_timeout=5.0)
    await wait_up(links_a, links_b)
    b = follower(tmp_path, "b", links_b.links, "  replica_log_entries: 50\n")
    a = follower(tmp_path, "a", links_a.links)
    # b, leader of epoch 5, shipped 40 of its 60 entries to a, then compacted (base 60) and was deposed.
    await appended(b, "b", append(5, 0, entries(5, 1, 60)))
    assert b.replicas[Q].base == 60
    log, file = a._replica(Q)
    for epoch, record in entries(5, 1, 40):
        log.append(epoch, record)
    gate = a.node.gate
    assert gate is not None
    leader = LeaderQueue(Q, 7, log, file, gate, ["b"], time.time)  # a leads epoch 7 from offset 40
    for seq in range(100, 105):
        leader.append((ENQUEUE, seq, "", "orders", b"\x00\x00", body(seq), 0))
    leading = _Leading(leader, None, trio.CancelScope())  # type: ignore[arg-type]  # no queue needed
    with trio.fail_after(10):
        offset, truncate = await a._catch_up_point(leading, "b", 5.0)
        batch = log.entries_from(offset, 1 << 20)
        payload = _queue_head(Q, 7) + _APPEND_HEAD.pack(0, offset, truncate) + encode_entries(batch)
        end = await links_a.links.request("b", "repl.append", payload)
    assert struct.unpack(">Q", end) == (log.end,)
    assert list(b.replicas[Q].state.held) == [*range(1, 41), *range(100, 105)]
    assert b.replicas[Q].epochs[-1] == (7, 40)


async def test_a_snapshot_part_whose_messages_spill_while_others_are_read_back_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader's snapshot reads a part's on-disk messages in a worker thread; a replica sync ending
    meanwhile spills messages that were in memory (the frozen state shares them). They were then
    missing from both, and the StopIteration that followed crashed the node."""
    replication = follower(tmp_path)
    file = ReplicaFile(tmp_path, *Q)
    on_disk = Held(None, None, None, None, at=location(1, 100), size=4, properties_size=2)
    in_memory = Held("", "orders", b"\x00\x00", b"m2.")

    def read(locations: list[int]) -> list[replica_file.Message | None]:
        in_memory.spill(location(1, 200))  # the sync that ended during the read
        return [(1, "", "orders", b"\x00\x00", b"m1..", 0) for _ in locations]

    monkeypatch.setattr(file, "read", read)
    messages = await replication._messages(file, [(1, on_disk), (2, in_memory)])
    assert [message[0][4] for message in messages] == [b"m1..", b"m2."]


async def test_a_long_truncation_is_replayed_off_the_loop_while_other_appends_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    """Replaying a long tail to truncate it took the loop for over 100 ms a 100,000 entries, which a
    loaded machine stretches past the lease's TTL: it runs in a worker thread instead."""
    replication = follower(tmp_path)
    await appended(replication, "a", append(5, 0, entries(5, 1, 6000)))
    on_loop: list[bool] = []
    gate = threading.Event()
    real = ReplicaLog.state_at

    def state_at(self: ReplicaLog, offset: int) -> ReplicaState:
        on_loop.append(threading.current_thread() is threading.main_thread())
        gate.wait(10)
        return real(self, offset)

    monkeypatch.setattr(ReplicaLog, "state_at", state_at)
    answer = replication._append("c", append(8, 5500, [(8, (DELIVERED, 1))], truncate=5500))
    assert not isinstance(answer, Deferred)
    ends: list[bytes] = []

    async def wait() -> None:
        ends.append(await answer)

    nursery.start_soon(wait)
    await trio.sleep(0.2)
    with pytest.raises(ValueError, match="being truncated"):  # another leader's: it probes again
        replication._append("a", append(9, 6000, entries(9, 7000, 1)))
    gate.set()
    with trio.fail_after(10):
        while not ends:
            await trio.sleep(0.01)
    assert struct.unpack(">Q", ends[0]) == (5501,) and on_loop == [False]
    replica = replication.replicas[Q]
    assert list(replica.state.held) == list(range(1, 5501)) and replica.state.held[1].delivered
    assert list(load_again(tmp_path).state.held) == list(range(1, 5501))
