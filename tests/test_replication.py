"""Replicated queues without I/O: the replica log (apply, truncation by epoch, snapshots, encoding), the
replica file read back after a crash, the leader's confirm rule, and the queue a new leader builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leveret.broker.cluster.confirms import ConfirmGate
from leveret.broker.cluster.replica import (
    DEAD_LETTERING,
    DELETED,
    DELIVERED,
    ENQUEUE,
    ENQUEUE_AT,
    RETURNED,
    SETTLED,
    SETTLED_RANGE,
    Record,
    ReplicaLog,
    decode_entries,
    decode_messages,
    decode_refs,
    decode_snapshot_head,
    encode_entries,
    encode_messages,
    encode_refs,
    encode_snapshot_head,
    location,
    split_location,
)
from leveret.broker.cluster.replica_file import ReplicaFile, load, stem
from leveret.broker.cluster.replication import LeaderQueue, ReplicatedJournal, majority_held
from leveret.broker.cluster.roles import QueueRoles, build_leader_queue
from leveret.broker.message import Message
from leveret.broker.queues.deadlines import Deadlines
from leveret.broker.queues.journal import NULL_JOURNAL
from leveret.broker.vhost import VirtualHost

NO_PROPERTIES = b"\x00\x00"  # a content header's property flags, none set


def enqueue(seq: int, body: bytes = b"x") -> Record:
    return (ENQUEUE, seq, "", "q", NO_PROPERTIES, body, 0)


def records_strategy() -> st.SearchStrategy[list[Record]]:
    seqs = st.integers(1, 30)
    return st.lists(
        st.one_of(
            seqs.map(enqueue),
            seqs.map(lambda s: (DELIVERED, s)),
            st.lists(seqs, max_size=4).map(lambda s: (SETTLED, s)),
            st.lists(seqs, max_size=4).map(lambda s: (RETURNED, s)),
            st.tuples(seqs, seqs).map(lambda r: (SETTLED_RANGE, min(r), max(r))),
            st.tuples(st.lists(seqs, max_size=4), st.sampled_from(["rejected", "expired", "maxlen"])).map(
                lambda r: (DEAD_LETTERING, r[0], r[1])
            ),
        ),
        max_size=60,
    ).map(_each_seq_enqueued_once)


def _each_seq_enqueued_once(records: list[Record]) -> list[Record]:
    """A leader gives each message a new seq: a log enqueues a seq at most once."""
    enqueued: set[int] = set()
    kept = []
    for record in records:
        if record[0] == ENQUEUE:
            if record[1] in enqueued:
                continue
            enqueued.add(record[1])
        kept.append(record)
    return kept


def summary(log: ReplicaLog) -> list[tuple[int, bytes | None, bool, int, str]]:
    return [(seq, h.body, h.delivered, h.returns, h.dead_lettering) for seq, h in log.state.held.items()]


def flags(log: ReplicaLog) -> list[tuple[int, int, bool, int, str]]:
    """Each message's seq, location (0: in memory), delivered flag, return count and dead-lettering."""
    return [(seq, h.at, h.delivered, h.returns, h.dead_lettering) for seq, h in log.state.held.items()]


def spill_all(log: ReplicaLog) -> None:
    """As if every enqueue in the tail were on disk, at 1000 + its offset."""
    log.spill([(record[1], 1000 + log.base + index, log.base + index)
               for index, (_, record) in enumerate(log.tail) if record[0] == ENQUEUE])


@settings(max_examples=60, deadline=None)
@given(records_strategy(), st.integers(0, 60))
def test_truncation_gives_the_state_of_the_prefix(records: list[Record], cut: int) -> None:
    whole = ReplicaLog()
    prefix = ReplicaLog()
    for i, record in enumerate(records):
        whole.append(1 + i // 10, record)
        if i < cut:
            prefix.append(1 + i // 10, record)
    assert whole.truncate(min(cut, len(records)))
    assert summary(whole) == summary(prefix)
    assert whole.end == prefix.end and whole.epochs == prefix.epochs


@settings(max_examples=60, deadline=None)
@given(records_strategy(), st.integers(0, 60))
def test_truncation_after_messages_went_to_disk_keeps_them_there(records: list[Record], cut: int) -> None:
    """Messages on disk leave memory (the tail keeps no body past its allowance, none here); truncating
    after that gives the prefix's state, every message found by its location."""
    whole, prefix = ReplicaLog(tail_bodies=0), ReplicaLog(tail_bodies=0)
    for i, record in enumerate(records):
        whole.append(1, record)
        if i < cut:
            prefix.append(1, record)
    spill_all(whole)
    spill_all(prefix)
    assert all(h.body is None and h.at for h in whole.state.held.values())
    assert all(record[0] != ENQUEUE for _, record in whole.tail)  # ENQUEUE_AT records now
    assert whole.truncate(min(cut, len(records)))
    assert flags(whole) == flags(prefix)
    assert all(h.body is None for h in whole.state.held.values())


def test_a_copy_shares_messages_and_each_side_copies_one_before_changing_it() -> None:
    log = ReplicaLog()
    for seq in range(1, 4):
        log.append(1, enqueue(seq))
    frozen = log.state.copy()
    log.append(1, (DELIVERED, 2))
    log.append(1, (RETURNED, [3]))
    assert [(s, h.delivered, h.returns) for s, h in frozen.held.items()] == [
        (1, False, 0), (2, False, 0), (3, False, 0)]
    assert [(s, h.delivered, h.returns) for s, h in log.state.held.items()] == [
        (1, False, 0), (2, True, 0), (3, True, 1)]
    assert frozen.held[1] is log.state.held[1]  # unchanged: still shared


@settings(max_examples=60, deadline=None)
@given(records_strategy())
def test_entries_and_snapshots_decode_to_what_was_encoded(records: list[Record]) -> None:
    entries = [(3, record) for record in records]
    assert [(e, tuple(r)) for e, r in decode_entries(encode_entries(entries))] == [
        (e, tuple(r)) for e, r in entries
    ]
    log = ReplicaLog()
    for record in records:
        log.append(3, record)
    # A streamed snapshot: its head, then its messages with their flags.
    head = encode_snapshot_head(log.end, log.epochs, log.state)
    held = log.state.held.items()
    messages = encode_messages(((seq, h.exchange, h.routing_key, h.properties_raw, h.body, h.deadline),
                                h.delivered, h.returns, h.dead_lettering)
                               for seq, h in held)  # type: ignore[misc]
    end, epochs, state, used = decode_snapshot_head(head)
    assert used == len(head) and (end, epochs, state.next_seq) == (log.end, log.epochs, log.state.next_seq)
    decoded = [(seq, h.size, h.delivered, h.returns, h.dead_lettering)
               for _, seq, h in decode_messages(messages)]
    assert decoded == [(seq, len(h.body or b""), h.delivered, h.returns, h.dead_lettering) for seq, h in held]
    # In a replica file: each message by its location.
    placed = {seq: 100 + seq for seq in log.state.held}
    end, epochs, state = decode_refs(encode_refs(log.end, log.epochs, log.state, placed))
    assert [(seq, h.at, h.delivered, h.returns, h.dead_lettering) for seq, h in state.held.items()] == [
        (seq, 100 + seq, h.delivered, h.returns, h.dead_lettering) for seq, h in held]


def test_kafka_rule_truncates_a_follower_to_where_its_epoch_ends_on_the_new_leader() -> None:
    # Epoch 1 wrote offsets 0-4 on the old leader; the new leader (epoch 2) only had 0-2 of them.
    follower, leader = ReplicaLog(), ReplicaLog()
    for seq in range(1, 6):
        follower.append(1, enqueue(seq))
    for seq in range(1, 4):
        leader.append(1, enqueue(seq))
    leader.start_epoch(2)
    leader.append(2, enqueue(10))
    point = min(follower.end, leader.end_offset_for(follower.last_epoch))
    assert point == 3  # where epoch 1 ends in the leader's log, not the follower's high-water mark
    assert follower.truncate(point)
    for epoch, record in leader.entries_from(point, 1 << 20):
        follower.append(epoch, record)
    assert summary(follower) == summary(leader) and follower.epochs == leader.epochs


def test_a_follower_behind_the_base_needs_a_snapshot() -> None:
    log = ReplicaLog(tail_limit=10)
    for seq in range(1, 20):
        log.append(1, enqueue(seq))
    assert log.compact() and log.base == 19 and not log.tail
    assert not log.truncate(5)
    log.append(1, (SETTLED, [1, 2]))
    assert list(log.state.held)[:2] == [3, 4]


def test_a_follower_that_compacted_past_where_the_logs_part_needs_a_snapshot() -> None:
    # The deposed leader compacted at offset 60; the new leader had only 40 entries of its epoch 1.
    old, new = ReplicaLog(tail_limit=50), ReplicaLog()
    for seq in range(1, 61):
        old.append(1, enqueue(seq))
    for seq in range(1, 41):
        new.append(1, enqueue(seq))
    new.start_epoch(2)
    new.append(2, enqueue(100))
    assert old.compact() and old.base == 60 and not old.truncate(40)
    assert new.catch_up_point(old.end, old.last_epoch, old.base) is None  # a snapshot, not truncate(40)
    assert new.catch_up_point(old.end, old.last_epoch, 0) == 40  # not compacted: Kafka's truncation
    assert new.catch_up_point(new.end, 2, 30) == new.end  # in step: goes on from its end
    assert old.catch_up_point(30, 1, 0) is None  # behind the leader's own base


def test_a_compaction_keeps_the_newest_entries_for_followers_not_sent_them_yet(tmp_path: Path) -> None:
    leader, follower = ReplicaLog(tail_limit=10), ReplicaLog()
    file = ReplicaFile(tmp_path, "/", "q")
    written(file, leader, [(1, enqueue(seq, b"body %d" % seq)) for seq in range(1, 13)])
    for epoch, record in leader.entries_from(0, 1 << 20)[:9]:  # the follower was sent 9 of them
        follower.append(epoch, record)
    written(file, leader, [(1, (SETTLED, [1, 2])), (1, enqueue(13))])
    assert leader.compact(keep=leader.end - follower.end)
    assert leader.base == 14 and leader.ship_base == 9 and not leader.tail
    assert leader.catch_up_point(follower.end, 1, follower.base) == 9  # no snapshot needed
    assert leader.catch_up_point(8, 1, 0) is None  # sent less than what was kept: a snapshot
    rest = leader.entries_from(9, 1 << 20)
    # Messages already on disk are shipped from there (read back first, as older tail entries are).
    assert [record[0] for _, record in rest] == [ENQUEUE_AT, ENQUEUE_AT, ENQUEUE_AT, SETTLED, ENQUEUE_AT]
    found = iter(file.read([record[2] for _, record in rest if record[0] == ENQUEUE_AT]))
    for epoch, record in rest:
        if record[0] == ENQUEUE_AT:
            message = next(found)
            assert message is not None
            record = (ENQUEUE, *message)
        follower.append(epoch, record)
    assert follower.end == leader.end and list(follower.state.held) == list(leader.state.held)
    bodies = [b"body %d" % seq for seq in range(3, 13)]
    assert [h.body for h in follower.state.held.values()] == [*bodies, b"x"]
    # Their file stays while the kept entries refer to it.
    assert split_location(rest[0][1][2])[0] in leader.generations()


def written(file: ReplicaFile, log: ReplicaLog, batch: list[tuple[int, Record]]) -> None:
    """Append `batch` to `log` and `file`, sync, and let the messages leave memory."""
    first = log.end
    for epoch, record in batch:
        log.append(epoch, record)
    positions: list[int] = []
    encoded = encode_entries(batch, positions)
    file.entries(encoded, [(record[1], at, first + index)
                           for index, ((_, record), at) in enumerate(zip(batch, positions, strict=True))
                           if at >= 0])
    work = file.take()
    file.sync(work)
    log.spill(work[2])


def test_appends_taken_before_a_new_generation_began_are_written_to_theirs(tmp_path: Path) -> None:
    """A follower compacts (a new generation) while its previous appends are being written by the worker
    thread: those went to the new generation's path, which its rewrite then replaced, and the locations
    of their messages pointed past the end of the old one ("runs past the file's end", read back by the
    next leader)."""
    log, file = ReplicaLog(tail_limit=3), ReplicaFile(tmp_path, "/", "q")
    batch = [(1, enqueue(seq, b"body %d" % seq)) for seq in range(1, 5)]
    first = log.end
    for epoch, record in batch:
        log.append(epoch, record)
    positions: list[int] = []
    file.entries(encode_entries(batch, positions),
                 [(record[1], at, first + i) for i, ((_, record), at) in enumerate(zip(batch, positions,
                                                                                           strict=True))])
    work = file.take()  # the sync's worker thread has it...
    assert log.compact()
    file.rewrite(log)  # ...when the loop starts a new generation
    file.sync(work)
    log.spill(work[2])
    file.sync(file.take())
    found = file.read([h.at for h in log.state.held.values()])
    assert [m[4] for m in found if m is not None] == [b"body %d" % seq for seq in range(1, 5)]


def bodies(file: ReplicaFile, log: ReplicaLog) -> list[bytes]:
    found = file.read([h.at for h in log.state.held.values()])
    return [message[4] for message in found if message is not None]


def test_a_bad_location_costs_only_its_own_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A location past the end of its generation (or at bytes that are not a message) reads back as None,
    logged; the other messages of that generation still come back, so a new leader is not left
    with an empty queue by one bad location."""
    log = ReplicaLog(tail_bodies=0)
    file = ReplicaFile(tmp_path, "/", "q")
    written(file, log, [(4, enqueue(1, b"a")), (4, enqueue(2, b"b")), (4, enqueue(3, b"c"))])
    good = [h.at for h in log.state.held.values()]
    generation, _ = split_location(good[0])
    past_the_end, inside_a_body = location(generation, 1 << 30), good[1] + 3
    found = file.read([good[0], past_the_end, good[1], inside_a_body, good[2]])
    assert [m[4] if m is not None else None for m in found] == [b"a", None, b"b", None, b"c"]
    assert "runs past the file's end" in caplog.text


def test_the_replica_file_reads_back_what_was_synced(tmp_path: Path) -> None:
    log = ReplicaLog(tail_bodies=0)
    file = ReplicaFile(tmp_path, "/", "q")
    file.epoch(4)
    log.start_epoch(4)
    written(file, log, [(4, enqueue(1, b"a")), (4, enqueue(2, b"b")), (4, (DELIVERED, 1)),
                        (4, enqueue(3, b"c"))])
    assert all(h.body is None for h in log.state.held.values())  # on disk: out of memory
    assert bodies(file, log) == [b"a", b"b", b"c"]
    log.truncate(3)
    file.truncate(3)
    file.sync(file.take())
    loaded = load(tmp_path, stem("/", "q"), file.generation)
    assert loaded is not None
    vhost, name, back, back_file = loaded
    assert (vhost, name) == ("/", "q")
    assert flags(back) == flags(log) and flags(log)[0][2:] == (True, 0, "") and len(flags(log)) == 2
    assert bodies(back_file, back) == [b"a", b"b"]
    assert back.epochs == [(4, 0)] and back.newest_epoch == 4
    # A new generation (a snapshot by location) replaces it; a torn tail after it is ignored.
    old = file.generation
    log.append(4, enqueue(9, b"in memory"))  # not on disk yet: written whole with the snapshot
    file.rewrite(log)
    work = file.take()
    file.sync(work)
    log.spill(work[2])
    assert file.generation == old + 1
    with open(file.path, "ab") as out:
        out.write(b"\x00\x00\x01\x00garbage")
    loaded = load(tmp_path, stem("/", "q"), file.generation)
    assert loaded is not None and flags(loaded[2]) == flags(log)
    assert bodies(loaded[3], loaded[2]) == [b"a", b"b", b"in memory"]
    # The old generation still holds messages 1 and 2: kept until they go.
    assert file.forget(log.generations()) == []
    log.append(4, (SETTLED, [1, 2]))
    assert log.generations() == {old, old + 1}  # the tail's settle may still be truncated away
    log.tail_limit = 0
    assert log.compact() and log.generations() == {old + 1}
    assert file.forget(log.generations()) == [tmp_path / f"{stem('/', 'q')}-{old}.log"]


def test_the_majority_held_end_is_the_leaders_and_the_best_followers() -> None:
    assert majority_held(9, [4, 7], 3) == 7
    assert majority_held(5, [4, 7], 3) == 5
    assert majority_held(9, [4, 7, 8, 2], 5) == 7  # two followers needed: the second best
    assert majority_held(9, [4], 2) == 4  # two replicas: both
    assert majority_held(9, [], 1) == 9
    assert majority_held(9, [8], 3) == 8
    assert majority_held(9, [], 3) == 0  # no follower known


def leader_queue(tmp_path: Path, gate: ConfirmGate) -> LeaderQueue:
    return LeaderQueue(("/", "q"), 7, ReplicaLog(), ReplicaFile(tmp_path, "/", "q"), gate,
                       ["b", "c"], lambda: 1000.0)


def test_confirms_wait_for_a_majority_with_the_leaders_own_copy(tmp_path: Path) -> None:
    gate = ConfirmGate()
    leader = leader_queue(tmp_path, gate)
    journal = ReplicatedJournal(leader)
    vhost = VirtualHost("/", lambda: 0.0, Deadlines())
    queue = vhost.declare_queue("q", owner=None, durable=True, exclusive=False, auto_delete=False,
                                arguments={})
    queue.journal = journal
    tickets = [queue.enqueue(Message("", "q", NO_PROPERTIES, b"m%d" % i)) for i in range(3)]
    assert all(isinstance(t, int) and t > 0 for t in tickets) and gate.safe() == 0
    leader.local_durable = leader.take_writes()
    replicas = ("a", "b", "c")
    leader.acked["b"] = 2
    # b and the leader are a majority: c, slow or gone, holds back nothing.
    assert leader.commit(replicas, True, "a") and gate.safe() == 2 and leader.committed == 2
    leader.acked["c"] = 3
    leader.local_durable = 2
    assert not leader.commit(replicas, True, "a")  # c alone is not enough: the leader's own copy counts
    leader.local_durable = 3
    assert not leader.commit(replicas, False, "a")  # the lease lapsed: nothing more
    leader.depose()
    assert gate.safe() == 2 and gate.take_failed() == {tickets[2]} and gate.safe() == 3
    assert queue.enqueue(Message("", "q", NO_PROPERTIES, b"late")) is None  # deposed: nacked


def test_a_new_leader_serves_the_replica_state_all_flagged_redelivered() -> None:
    log = ReplicaLog()
    for seq in range(1, 5):
        log.append(1, enqueue(seq, b"m%d" % seq))
    log.append(1, (DELIVERED, 2))
    log.append(1, (SETTLED, [1]))
    log.append(1, (RETURNED, [3]))
    vhost = VirtualHost("/", lambda: 0.0, Deadlines())
    old = vhost.declare_queue("q", owner=None, durable=True, exclusive=False, auto_delete=False,
                              arguments={"x-queue-type": "quorum"})
    built = build_leader_queue(vhost, old, log.state, NULL_JOURNAL, 0.0)
    QueueRoles().lead(vhost, built)
    assert vhost.queues["q"] is built
    assert [(e.message.body, e.redelivered) for e in built.ready] == [
        (b"m2", True), (b"m3", True), (b"m4", True)
    ]
    taken = built.take()
    assert taken is not None and taken.message.body == b"m2"
    log.append(2, (DELETED,))
    assert log.state.deleted and not log.state.held


def test_a_message_ttl_is_logged_as_wall_clock_time_and_goes_on_at_the_new_leader(tmp_path: Path) -> None:
    gate = ConfirmGate()
    leader = leader_queue(tmp_path, gate)  # its wall clock: 1000 s
    vhost = VirtualHost("/", lambda: 50.0, Deadlines())
    queue = vhost.declare_queue("q", owner=None, durable=True, exclusive=False, auto_delete=False,
                                arguments={"x-message-ttl": 8000})
    queue.journal = ReplicatedJournal(leader)
    queue.enqueue(Message("", "q", NO_PROPERTIES, b"timed"))
    (held,) = leader.replica.state.held.values()
    assert held.deadline == 1_008_000  # ms since the epoch
    # A new leader whose wall clock reads 3 s later, whose monotonic clock reads 7: 5 s left.
    other = VirtualHost("/", lambda: 7.0, Deadlines())
    like = other.declare_queue("q", owner=None, durable=True, exclusive=False, auto_delete=False,
                               arguments={"x-message-ttl": 8000})
    built = build_leader_queue(other, like, leader.replica.state, NULL_JOURNAL, 1003.0)
    (entry,) = built.ready
    assert entry.expires == pytest.approx(12.0)  # type: ignore[attr-defined]


def test_a_new_leader_counts_its_whole_log_as_confirmed(tmp_path: Path) -> None:
    """A follower rejoins the ISR only once it holds all of it: the previous leader may have confirmed
    any of it."""
    log = ReplicaLog()
    for seq in range(1, 6):
        log.append(1, enqueue(seq))
    leader = LeaderQueue(("/", "q"), 2, log, ReplicaFile(tmp_path, "/", "q"), ConfirmGate(),
                         ["b", "c"], lambda: 0.0)
    assert leader.committed == 5


def test_the_new_leaders_queue_follows_the_vhosts_policies() -> None:
    from leveret.broker.policies import parse_policy

    vhost = VirtualHost("/", lambda: 0.0, Deadlines())
    body = {"pattern": "^q$", "apply-to": "queues", "definition": {"max-length": 2}}
    vhost.set_policy(parse_policy("/", "limit", body, operator=False), operator=False)
    old = vhost.declare_queue("q", owner=None, durable=True, exclusive=False, auto_delete=False, arguments={})
    log = ReplicaLog()
    for seq in range(1, 4):
        log.append(1, enqueue(seq))
    built = build_leader_queue(vhost, old, log.state, NULL_JOURNAL, 0.0)
    assert built.effective_arguments.get("x-max-length") == 2


AT_LEAST_ONCE = {
    "x-queue-type": "quorum",
    "x-dead-letter-exchange": "dlx",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


def test_messages_held_for_at_least_once_dead_lettering_stay_held_at_a_new_leader(tmp_path: Path) -> None:
    """The old leader logged them DEAD_LETTERING: the new leader holds them again (not ready) and
    forwards them when its timers run, and a copy the target took settles them in the log."""
    gate = ConfirmGate()
    leader = leader_queue(tmp_path, gate)
    vhost = VirtualHost("/", lambda: 0.0, Deadlines())
    queue = vhost.declare_queue("q", owner=None, durable=True, exclusive=False, auto_delete=False,
                                arguments=AT_LEAST_ONCE)
    queue.journal = ReplicatedJournal(leader)
    for body in (b"a", b"b", b"c"):
        queue.enqueue(Message("", "q", NO_PROPERTIES, body))
    entry = queue.take()
    assert entry is not None and not isinstance(entry, tuple)
    queue.reject([entry.seq])  # dlx does not exist: held
    assert queue.message_count == 2
    assert [h.dead_lettering for h in leader.replica.state.held.values()] == ["rejected", "", ""]

    other = VirtualHost("/", lambda: 5.0, Deadlines())
    other.declare_exchange("dlx", "fanout", durable=True, auto_delete=False, internal=False, arguments={})
    target = other.declare_queue("dead", owner=None, durable=True, exclusive=False, auto_delete=False,
                                 arguments={})
    other.exchanges["dlx"].bind(target, "", {})
    like = other.declare_queue("q", owner=None, durable=True, exclusive=False, auto_delete=False,
                               arguments=AT_LEAST_ONCE)
    new_leader = LeaderQueue(("/", "q"), 8, leader.replica, ReplicaFile(tmp_path, "/", "q"),
                             gate, ["b", "c"], lambda: 1000.0)
    built = build_leader_queue(other, like, leader.replica.state, ReplicatedJournal(new_leader), 1000.0)
    QueueRoles().lead(other, built)
    assert [e.message.body for e in built.ready] == [b"b", b"c"]  # the held one is not ready
    assert target.message_count == 0
    other.deadlines.fire(10.0)  # the first retry is due at once
    assert [e.message.body for e in target.ready] == [b"a"]
    assert [h.body for h in new_leader.replica.state.held.values()] == [b"b", b"c"]  # settled in the log
