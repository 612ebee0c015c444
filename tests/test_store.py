"""The durable store: framing, segments, recovery, group commit, definitions, and a kill -9 loop."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from leveret.broker.store import DefinitionsError, DefinitionsStore, QueueLog, Store, StoredMessage
from leveret.broker.store.queue_log import NO_DEADLINE
from leveret.broker.store.records import (
    ENQUEUE,
    ENQUEUE_EXPIRING,
    EPOCH,
    RecordScanner,
    enqueue_payload,
    record_header,
)
from leveret.broker.store.segments import HEADER_SIZE, list_segments, read_salt, segment_path

PROPS = b"\x10\x00\x02"  # delivery_mode 2


def sync(store: Store) -> int:
    """One group commit, start to end, on this thread."""
    batch = store.begin_sync()
    assert batch is not None
    batch.run()
    assert batch.error is None
    return store.complete(batch)


def flush(store: Store) -> None:
    """Like `sync`, when there is anything to write."""
    batch = store.begin_sync()
    if batch is not None:
        batch.run()
        store.complete(batch)


def open_log(directory: Path, name: str = "q", **kwargs: int) -> tuple[Store, QueueLog, list[StoredMessage]]:
    store = Store(directory, **kwargs)
    log = store.open_queue("/", name)
    return store, log, log.recover()


def enqueue(log: QueueLog, seq: int, body: bytes | None = None) -> int:
    body = body if body is not None else b"m%d" % seq
    return log.append_enqueue(seq, "amq.direct", f"key.{seq}", PROPS, body)


def seqs(messages: list[StoredMessage]) -> list[int]:
    return [message.seq for message in messages]


def segment_files(log: QueueLog) -> list[int]:
    return list_segments(log.directory)


# -- recovery ---------------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    store, log, recovered = open_log(tmp_path)
    assert recovered == []
    other = store.open_queue("vhost-2", "q")
    other.recover()
    log.append_enqueue(1, "ex", "rk", b"\x90\x00\x0atext/plain\x02", b"hello")
    log.append_enqueue(2, "", "ünïcode", b"", b"")
    big = os.urandom(200_000)
    other.append_enqueue(7, "amq.topic", "a.b", PROPS, big)
    sync(store)

    _, log, recovered = open_log(tmp_path)
    assert recovered == [
        StoredMessage(1, "ex", "rk", b"\x90\x00\x0atext/plain\x02", b"hello"),
        StoredMessage(2, "", "ünïcode", b"", b""),
    ]
    assert log.last_seq == 2
    other = Store(tmp_path).open_queue("vhost-2", "q")
    assert other.recover() == [StoredMessage(7, "amq.topic", "a.b", PROPS, big)]


def test_settle_removes_for_good(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path)
    for seq in range(1, 11):
        enqueue(log, seq)
    log.append_settle([2, 4, 5, 6, 9])
    sync(store)
    store, log, recovered = open_log(tmp_path)
    assert seqs(recovered) == [1, 3, 7, 8, 10]
    log.append_settle([1, 10])
    sync(store)
    assert seqs(open_log(tmp_path)[2]) == [3, 7, 8]


def test_recovery_is_in_seq_order_and_new_seqs_continue_above(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path, max_segment_size=512)
    for seq in range(3, 300, 3):  # gaps: the other seqs were transient messages
        enqueue(log, seq)
        if seq % 4 == 0:
            log.append_settle([seq - 6])
        if seq % 5 == 0:
            sync(store)
    sync(store)
    expected = [seq for seq in range(3, 300, 3) if seq + 6 > 297 or (seq + 6) % 4]
    _, log, recovered = open_log(tmp_path, max_segment_size=512)
    assert seqs(recovered) == expected
    assert log.last_seq == 297
    with pytest.raises(ValueError):
        enqueue(log, 297)


def test_delivered_flag_survives_without_an_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, log, _ = open_log(tmp_path)
    for seq in (1, 2, 3):
        enqueue(log, seq)
    sync(store)
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    log.append_delivered(2)
    log.append_delivered(3)
    log.append_delivered(99)  # never stored (a transient message): ignored
    sync(store)
    assert fsyncs == []
    log.append_settle([3])
    sync(store)
    recovered = open_log(tmp_path)[2]
    assert [(message.seq, message.delivered) for message in recovered] == [(1, False), (2, True)]


def test_returns_count_and_removals_settle_across_a_reopen(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path)
    for seq in (1, 2, 3):
        enqueue(log, seq)
    log.append_returned([1, 2])
    log.append_returned([1])
    log.append_removed([3], "expired")
    sync(store)
    recovered = Store(tmp_path).open_queue("/", "q").recover_index()
    assert list(recovered.seqs) == [1, 2]  # the removed one is gone, as if settled
    assert recovered.returns is not None and list(recovered.returns) == [2, 1]
    assert list(recovered.delivered) == [1, 1]  # a returned message comes back redelivered


def test_each_segment_records_the_epoch_and_the_queue_log_position(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path, max_segment_size=300)
    for seq in range(1, 11):
        enqueue(log, seq)
    log.append_settle([1, 2])
    sync(store)
    written = log.position
    assert written == 11 + len(segment_files(log))  # the records, and an EPOCH record in each segment
    _, again, _ = open_log(tmp_path, max_segment_size=300)
    assert again.position == written  # the position goes on from the log alone, per queue
    assert again.epoch == 0


def test_unknown_seqs_write_nothing(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path)
    assert log.append_settle([5, 6]) == 0
    assert log.append_delivered(5) == 0
    assert store.begin_sync() is None


def test_appending_before_recover_is_refused(tmp_path: Path) -> None:
    log = Store(tmp_path).open_queue("/", "q")
    with pytest.raises(RuntimeError):
        enqueue(log, 1)


# -- segments ----------------------------------------------------------------------------------------


def test_segments_roll_and_settled_ones_are_deleted(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path, max_segment_size=1050)
    body = bytes(200)
    for seq in range(1, 41):
        enqueue(log, seq, body)
    sync(store)
    files = segment_files(log)
    assert files == list(range(10))  # four 245-byte records per segment, after its header and EPOCH record
    assert all(os.path.getsize(segment_path(log.directory, i)) <= 1050 for i in files)

    log.append_settle(range(1, 21))  # the first half: segments 0-4 go, the settle starts segment 10
    sync(store)
    assert segment_files(log) == list(range(5, 11))
    assert seqs(open_log(tmp_path, max_segment_size=1050)[2]) == list(range(21, 41))

    store, log, _ = open_log(tmp_path, max_segment_size=1050)
    log.append_settle(range(21, 41))
    sync(store)
    store, log, recovered = open_log(tmp_path, max_segment_size=1050)
    assert recovered == [] and segment_files(log) == []  # a drained queue restarts with no segment at all


def test_a_segment_settling_an_older_live_one_stays_until_that_one_goes(tmp_path: Path) -> None:
    """Deleting segment 1, which settles messages of segment 0, before segment 0 itself would bring those
    settled messages back after a restart."""
    size = 700  # four 145-byte enqueues per segment
    store, log, _ = open_log(tmp_path, max_segment_size=size)
    for seq in range(1, 9):
        enqueue(log, seq, bytes(100))  # 1..4 in segment 0, 5..8 in segment 1
    log.append_settle([2, 3, 4])  # in segment 1: it now refers to segment 0
    log.append_settle(range(5, 9))  # nothing enqueued in segment 1 is live any more
    enqueue(log, 9, bytes(100))  # segment 2
    sync(store)
    assert segment_files(log) == [0, 1, 2]
    store, log, recovered = open_log(tmp_path, max_segment_size=size)
    assert seqs(recovered) == [1, 9] and segment_files(log) == [0, 1, 2]

    log.append_settle([1])
    sync(store)
    assert segment_files(log) == [1, 2, 3]  # segment 0 went; 1 waits for that to be durable
    enqueue(log, 10)
    sync(store)
    assert segment_files(log) == [2, 3]
    assert seqs(open_log(tmp_path, max_segment_size=size)[2]) == [9, 10]


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_a_model_across_restarts(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    model: dict[int, bool] = {}  # seq -> delivered
    next_seq = 1
    store, log, _ = open_log(tmp_path, max_segment_size=rnd.choice([300, 700, 4096]))
    for _ in range(400):
        action = rnd.random()
        if action < 0.45:
            enqueue(log, next_seq, os.urandom(rnd.randrange(0, 150)))
            model[next_seq] = False
            next_seq += rnd.choice([1, 1, 2])
        elif action < 0.75 and model:
            chosen = rnd.sample(sorted(model), rnd.randint(1, min(5, len(model))))
            log.append_settle(chosen)
            for seq in chosen:
                del model[seq]
        elif action < 0.85 and model:
            seq = rnd.choice(sorted(model))
            log.append_delivered(seq)
            model[seq] = True
        elif action < 0.97:
            flush(store)
        else:
            flush(store)
            store, log, recovered = open_log(tmp_path, max_segment_size=rnd.choice([300, 700, 4096]))
            assert [(m.seq, m.delivered) for m in recovered] == sorted(model.items())
            next_seq = max(next_seq, log.last_seq + 1)


# -- damage ------------------------------------------------------------------------------------------


def _one_segment(tmp_path: Path, bodies: list[bytes]) -> tuple[Path, list[int]]:
    """A queue log with one message per body, each synced on its own; returns the segment file and the
    offset each record starts at (plus the file's size)."""
    store, log, _ = open_log(tmp_path)
    path = segment_path(log.directory, 0)
    offsets = [HEADER_SIZE]
    for seq, body in enumerate(bodies, 1):
        enqueue(log, seq, body)
        sync(store)
        offsets.append(path.stat().st_size)
    return path, offsets


def test_a_torn_tail_at_every_offset_keeps_every_complete_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, offsets = _one_segment(tmp_path / "original", [b"a" * 40, b"b" * 50, b"c" * 60])
    whole = path.read_bytes()
    last = offsets[-2]
    for cut in range(last, len(whole)):
        directory = tmp_path / f"cut{cut}"
        shutil.copytree(tmp_path / "original", directory)
        torn = directory / path.relative_to(tmp_path / "original")
        torn.write_bytes(whole[:cut])
        caplog.clear()
        store, log, recovered = open_log(directory)
        assert seqs(recovered) == [1, 2], cut
        assert torn.stat().st_size == last  # truncated back to the last valid record
        assert (cut == last) or "torn or corrupt tail" in caplog.text
        enqueue(log, 3, b"again")
        sync(store)
        assert seqs(open_log(directory)[2]) == [1, 2, 3]
        shutil.rmtree(directory)


def test_a_flipped_byte_in_a_middle_record_loses_only_that_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, offsets = _one_segment(tmp_path / "original", [b"first" * 10, b"middle" * 10, b"last" * 10])
    whole = path.read_bytes()
    for at in range(offsets[1], offsets[2]):
        directory = tmp_path / f"flip{at}"
        shutil.copytree(tmp_path / "original", directory)
        damaged = directory / path.relative_to(tmp_path / "original")
        damaged.write_bytes(whole[:at] + bytes([whole[at] ^ 0x20]) + whole[at + 1 :])
        caplog.clear()
        recovered = open_log(directory)[2]
        assert seqs(recovered) == [1, 3], at
        assert recovered[1].body == b"last" * 10
        assert "skipped" in caplog.text
        assert damaged.stat().st_size == len(whole)  # not a tail: nothing cut
        shutil.rmtree(directory)


def test_a_record_inside_a_body_is_not_taken_for_a_real_one_after_damage(tmp_path: Path) -> None:
    """Resync looks for the magic; a publisher's body holding a well-formed record (under any salt but the
    segment's, which it cannot know) must not turn into a message when the record around it is damaged."""
    payload = enqueue_payload(50, "x", "y", b"", b"fake")
    fake = record_header(ENQUEUE, payload, 0) + payload
    path, offsets = _one_segment(tmp_path, [b"one", b"<" + fake + b">", b"three"])
    data = bytearray(path.read_bytes())
    data[offsets[1]] ^= 0xFF  # the outer record's magic
    path.write_bytes(bytes(data))
    assert seqs(open_log(tmp_path)[2]) == [1, 3]


def test_one_damaged_header_copy_is_survivable_two_are_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = _one_segment(tmp_path, [b"one", b"two"])
    data = bytearray(path.read_bytes())
    data[3] ^= 1
    path.write_bytes(bytes(data))
    assert seqs(open_log(tmp_path)[2]) == [1, 2]
    data[20] ^= 1
    path.write_bytes(bytes(data))
    store, log, recovered = open_log(tmp_path)
    assert recovered == [] and "both header copies" in caplog.text
    assert path.with_name(path.name + ".corrupt").exists()
    enqueue(log, 3)  # the log goes on in a new segment
    sync(store)
    assert seqs(open_log(tmp_path)[2]) == [3]


def test_a_segment_torn_while_being_created_is_removed(tmp_path: Path) -> None:
    path, _ = _one_segment(tmp_path, [b"one"])
    torn = segment_path(path.parent, 1)
    torn.write_bytes(path.read_bytes()[:10])
    assert seqs(open_log(tmp_path)[2]) == [1]
    assert not torn.exists()


# -- group commit ------------------------------------------------------------------------------------


def test_appends_during_a_batch_are_not_reported_by_it(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path)
    first = enqueue(log, 1)
    assert store.append_position == first and store.durable_position == 0
    batch = store.begin_sync()
    assert batch is not None and batch.new_positions == range(1, 2)
    worker = threading.Thread(target=batch.run)
    worker.start()
    later = [enqueue(log, seq) for seq in range(2, 200)]  # while the batch may be running
    worker.join()
    with pytest.raises(RuntimeError):
        store.begin_sync()
    assert store.complete(batch) == first < later[-1]
    second = store.begin_sync()
    assert second is not None and second.new_positions == range(2, later[-1] + 1)
    second.run()
    assert store.complete(second) == later[-1] == store.durable_position
    assert store.begin_sync() is None
    assert seqs(open_log(tmp_path)[2]) == list(range(1, 200))


def test_one_fsync_per_touched_file_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, log, _ = open_log(tmp_path)
    other = store.open_queue("/", "other")
    other.recover()
    enqueue(log, 1)
    enqueue(other, 1)
    sync(store)  # creates both segments
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    for seq in range(2, 100):
        enqueue(log, seq)
        enqueue(other, seq)
    log.append_settle(range(2, 50))
    sync(store)
    assert len(fsyncs) == 2


@pytest.mark.parametrize("failing", ["pwrite", "fsync"])
def test_a_failed_write_is_reported_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    store, log, _ = open_log(tmp_path)
    enqueue(log, 1)
    sync(store)

    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    for seq in range(2, 6):
        enqueue(log, seq)
    with monkeypatch.context() as patch:
        patch.setattr(os, failing, disk_full)
        batch = store.begin_sync()
        assert batch is not None
        batch.run()
        assert isinstance(batch.error, OSError) and batch.error.errno == errno.ENOSPC
        assert store.complete(batch) == 1  # none of 2..5 reported durable: nack them
        assert batch.new_positions == range(2, 6)
        enqueue(log, 6)
        batch = store.begin_sync()
        assert batch is not None
        batch.run()
        assert batch.error is not None and store.complete(batch) == 1
        assert batch.new_positions == range(6, 7)
    enqueue(log, 7)
    batch = store.begin_sync()
    assert batch is not None and batch.new_positions == range(7, 8)
    batch.run()
    assert batch.error is None and store.complete(batch) == 7
    # The failed writes were retried in order: nothing lost, nothing doubled.
    assert seqs(open_log(tmp_path)[2]) == [1, 2, 3, 4, 5, 6, 7]


# -- store -------------------------------------------------------------------------------------------


def test_queue_ids_are_stable_and_safe_as_file_names() -> None:
    long_name = "q/../" + "é" * 120
    queue_id = Store.queue_id("/", long_name)
    assert queue_id == Store.queue_id("/", long_name) != Store.queue_id("", "/" + long_name)
    assert queue_id.isalnum() and len(queue_id) == 32


def test_deleting_a_queue_removes_its_files_and_a_redeclared_one_starts_empty(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path)
    enqueue(log, 1)
    sync(store)
    old_directory = log.directory
    enqueue(log, 2)
    batch = store.begin_sync()  # a batch still writing to the queue when it is deleted
    assert batch is not None
    store.delete_queue(Store.queue_id("/", "q"))
    again = store.open_queue("/", "q")
    assert again.recover() == [] and again.directory != old_directory
    enqueue(again, 1, b"new")
    batch.run()
    store.complete(batch)
    sync(store)  # this batch removes the deleted queue's files
    assert not old_directory.exists()
    assert store.stored_queues() == {Store.queue_id("/", "q"): ("/", "q")}
    assert [m.body for m in open_log(tmp_path)[2]] == [b"new"]


def test_start_cleans_up_after_interrupted_creates_and_deletes(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path)
    enqueue(log, 1)
    sync(store)
    queue_id = Store.queue_id("/", "q")
    # A redeclaration whose predecessor's removal a crash cut short:
    newer = log.directory.with_name(f"{queue_id}.7")
    shutil.copytree(log.directory, newer)
    creating = log.directory.with_name(f"{queue_id}.9.creating")
    creating.mkdir()
    store = Store(tmp_path)
    assert not log.directory.exists() and not creating.exists()
    assert store.stored_queues() == {queue_id: ("/", "q")}
    assert store.open_queue("/", "q").directory == newer


def test_orphans_can_be_listed_and_deleted(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path, name="gone")
    enqueue(log, 1)
    sync(store)
    store = Store(tmp_path)
    assert store.stored_queues() == {Store.queue_id("/", "gone"): ("/", "gone")}
    store.delete_queue(Store.queue_id("/", "gone"))
    sync(store)
    assert Store(tmp_path).stored_queues() == {}


# -- deadlines (message TTL as wall-clock time) ------------------------------------------------------


def record_kinds(log: QueueLog) -> list[int]:
    """The kinds of the records in the log's first segment, in order."""
    data = segment_path(log.directory, 0).read_bytes()
    salt = read_salt(data[:HEADER_SIZE])
    assert salt is not None
    return [kind for kind, _, _ in RecordScanner(data, HEADER_SIZE, salt)]


def test_a_message_without_a_deadline_keeps_the_plain_enqueue_record(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path)
    enqueue(log, 1)
    log.append_enqueue(2, "amq.direct", "key.2", PROPS, b"m2", deadline=1_700_000_000_123)
    sync(store)
    data = segment_path(log.directory, 0).read_bytes()
    plain = enqueue_payload(1, "amq.direct", "key.1", PROPS, b"m1")
    # After the segment's EPOCH record (13 + 12 bytes), right after its 13-byte record header, as before.
    assert data[HEADER_SIZE + 25 + 13 :].startswith(plain)
    assert record_kinds(log) == [EPOCH, ENQUEUE, ENQUEUE_EXPIRING]


def test_deadlines_come_back_with_their_messages(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path, max_segment_size=300)  # several segments
    deadline = 1_700_000_000_000
    for seq in range(1, 21):
        log.append_enqueue(seq, "", "q", PROPS, b"m%d" % seq, deadline + seq if seq % 3 else None)
    log.append_settle([3, 4])
    sync(store)

    store, log, recovered = open_log(tmp_path, max_segment_size=300)
    assert [(m.seq, m.deadline) for m in recovered] == [
        (seq, deadline + seq if seq % 3 else None) for seq in range(1, 21) if seq not in (3, 4)
    ]
    assert recovered[0] == StoredMessage(1, "", "q", PROPS, b"m1", deadline=deadline + 1)
    assert Store(tmp_path, max_segment_size=300).open_queue("/", "q").recover_index().expiring


def test_the_index_of_a_log_without_deadlines_has_no_deadline_column(tmp_path: Path) -> None:
    store, log, _ = open_log(tmp_path)
    for seq in range(1, 4):
        enqueue(log, seq)
    log.append_enqueue(4, "", "q", PROPS, b"gone", deadline=1_700_000_000_000)
    log.append_settle([4])  # the only one with a deadline is settled
    sync(store)
    index = Store(tmp_path).open_queue("/", "q").recover_index()
    assert list(index.seqs) == [1, 2, 3]
    assert index.deadlines is None and not index.expiring


def test_deadlines_stay_with_their_seqs_in_a_log_out_of_order(tmp_path: Path) -> None:
    """Seqs never go down within a log, but its recovery copes with a log that has them so."""
    store, log, _ = open_log(tmp_path)
    log.append_enqueue(5, "", "q", PROPS, b"five", deadline=5000)
    enqueue(log, 6)
    sync(store)
    data = bytearray(segment_path(log.directory, 0).read_bytes())
    salt = read_salt(bytes(data[:HEADER_SIZE]))
    assert salt is not None
    for seq, deadline in ((2, 2000), (3, None)):  # appended behind the log's back, seqs below 5
        payload = enqueue_payload(seq, "", "q", PROPS, b"m%d" % seq)
        kind = ENQUEUE
        if deadline is not None:
            payload, kind = deadline.to_bytes(8, "little") + payload, ENQUEUE_EXPIRING
        data += record_header(kind, payload, salt) + payload
    segment_path(log.directory, 0).write_bytes(bytes(data))
    index = Store(tmp_path).open_queue("/", "q").recover_index()
    assert list(index.seqs) == [2, 3, 5, 6]
    assert index.deadlines is not None
    assert list(index.deadlines) == [2000, NO_DEADLINE, 5000, NO_DEADLINE]


# -- definitions -------------------------------------------------------------------------------------


def test_definitions_round_trip_in_order(tmp_path: Path) -> None:
    definitions = DefinitionsStore(tmp_path / "definitions.json")
    assert definitions.load() == {}
    saved = {
        "exchanges": [{"vhost": "/", "name": "z"}, {"vhost": "/", "name": "a"}],
        "queues": [{"vhost": "/", "name": "ü", "arguments": {"x-max-length": 10}}],
        "bindings": [{"source": "z", "destination": "ü", "routing_key": "3"}],
    }
    definitions.save(saved)
    definitions.save(saved | {"users": []})
    assert DefinitionsStore(tmp_path / "definitions.json").load() == saved | {"users": []}
    assert os.listdir(tmp_path) == ["definitions.json"]


@pytest.mark.parametrize("content", [b'{"queues": [', b"\xff\xfe", b"[1, 2]", b""])
def test_corrupt_definitions_are_reported_clearly(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "definitions.json"
    path.write_bytes(content)
    with pytest.raises(DefinitionsError, match=r"definitions file \S+ (is corrupt|cannot be read)"):
        DefinitionsStore(path).load()


# -- kill -9 -----------------------------------------------------------------------------------------

# Appends to three queues and settles some messages, a batch running in a thread while the main thread
# keeps appending. Prints "s q:seq ..." before it settles (an ack a consumer sent), and after each batch
# what became durable: "C q:seq ..." (confirmed enqueues) and "S q:seq ..." (settles written).
CHILD = textwrap.dedent(
    """
    import random, sys, threading
    from leveret.broker.store import Store

    store = Store(sys.argv[1], max_segment_size=16384)
    rnd = random.Random(int(sys.argv[2]))
    logs = [store.open_queue("/", f"q{i}") for i in range(3)]
    live = [[m.seq for m in log.recover()] for log in logs]
    waiting = []  # (position, "C" or "S", queue, seqs)

    def body(q, seq):
        return (b"%d:%d;" % (q, seq)) * (seq % 97)

    def append_some():
        for _ in range(rnd.randint(1, 20)):
            q = rnd.randrange(3)
            seq = logs[q].last_seq + 1
            waiting.append((logs[q].append_enqueue(seq, "ex", "k", b"", body(q, seq)), "C", q, [seq]))
            live[q].append(seq)
        q = rnd.randrange(3)
        if live[q] and rnd.random() < 0.7:
            chosen = rnd.sample(live[q], rnd.randint(1, min(8, len(live[q]))))
            for seq in chosen:
                live[q].remove(seq)
            print("s", *(f"{q}:{seq}" for seq in chosen), flush=True)
            waiting.append((logs[q].append_settle(chosen), "S", q, chosen))

    print("ready", flush=True)
    while True:
        append_some()
        batch = store.begin_sync()
        worker = threading.Thread(target=batch.run)
        worker.start()
        while worker.is_alive():
            append_some()
        worker.join()
        durable = store.complete(batch)
        assert batch.error is None
        done = [w for w in waiting if w[0] <= durable]
        waiting = [w for w in waiting if w[0] > durable]
        for kind in "CS":
            items = [f"{q}:{seq}" for _, k, q, seqs in done if k == kind for seq in seqs]
            if items:
                print(kind, *items, flush=True)
    """
)


def _crash_loop(directory: Path, rounds: int, seed: int) -> None:
    rnd = random.Random(seed)
    seen: dict[str, set[tuple[int, int]]] = {"C": set(), "s": set(), "S": set()}
    for round_ in range(rounds):
        output = directory.parent / f"child-{round_}.out"
        with output.open("wb") as out:
            child = subprocess.Popen([sys.executable, "-c", CHILD, str(directory), str(seed * 1000 + round_)],
                                     stdout=out, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 30
            while b"ready" not in output.read_bytes():
                assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(rnd.uniform(0.05, 0.6))
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            assert child.returncode == -signal.SIGKILL, child.stderr.read().decode() if child.stderr else ""
        for line in output.read_bytes().split(b"\n")[:-1]:  # the last line may be cut short
            kind, *items = line.decode().split()
            if kind in seen:
                seen[kind].update((int(q), int(seq)) for q, seq in (item.split(":") for item in items))
        store = Store(directory)
        recovered = set()
        for q in range(3):
            for message in store.open_queue("/", f"q{q}").recover():
                assert message.body == (b"%d:%d;" % (q, message.seq)) * (message.seq % 97)
                recovered.add((q, message.seq))
        # Confirmed and not acked: there. Acked and the ack written: gone.
        lost = seen["C"] - seen["s"] - recovered
        assert not lost, sorted(lost)[:10]
        assert not recovered & seen["S"]
    assert seen["C"] and seen["S"]


def test_every_confirmed_message_survives_kill_9(tmp_path: Path) -> None:
    _crash_loop(tmp_path / "store", rounds=4, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_every_confirmed_message_survives_many_kill_9(tmp_path: Path, seed: int) -> None:
    _crash_loop(tmp_path / "store", rounds=25, seed=seed)
