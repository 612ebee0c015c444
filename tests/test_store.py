"""The durable store: framing, segments, recovery, group commit, definitions, and a kill -9 loop."""

from __future__ import annotations

import errno
import logging
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

from leveret.broker.store import DefinitionsError, DefinitionsStore, QueueLog, Store, StoredMessage, records, segments

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
    return log.append_enqueue(seq, "amq.direct", f"key.{seq}", PROPS, body if body is not None else b"m%d" % seq)


def seqs(messages: list[StoredMessage]) -> list[int]:
    return [message.seq for message in messages]


def segment_files(log: QueueLog) -> list[int]:
    return segments.list_segments(log.directory)


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
    assert Store(tmp_path).open_queue("vhost-2", "q").recover() == [StoredMessage(7, "amq.topic", "a.b", PROPS, big)]


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
    store, log, _ = open_log(tmp_path, max_segment_size=1024)
    body = bytes(200)
    for seq in range(1, 41):
        enqueue(log, seq, body)
    sync(store)
    files = segment_files(log)
    assert len(files) >= 8
    assert all(os.path.getsize(segments.segment_path(log.directory, i)) <= 1024 for i in files)

    log.append_settle(range(1, 21))  # the first half: the segments holding only those go
    sync(store)
    remaining = segment_files(log)
    assert remaining[0] > files[0] and len(remaining) < len(files) + 1
    assert seqs(open_log(tmp_path, max_segment_size=1024)[2]) == list(range(21, 41))

    store, log, _ = open_log(tmp_path, max_segment_size=1024)
    log.append_settle(range(21, 41))
    sync(store)
    store, log, recovered = open_log(tmp_path, max_segment_size=1024)
    assert recovered == [] and segment_files(log) == []  # a drained queue restarts with no segment at all


def test_a_segment_settling_an_older_live_one_stays_until_that_one_goes(tmp_path: Path) -> None:
    """Deleting segment B, which settles messages of an older segment A, before A itself would bring those
    settled messages back after a restart."""
    store, log, _ = open_log(tmp_path, max_segment_size=600)
    for seq in range(1, 5):  # segment 0 holds 1..4 (about 140 bytes each)
        enqueue(log, seq, bytes(100))
    sync(store)
    assert segment_files(log) == [0]
    for seq in range(5, 13):
        enqueue(log, seq, bytes(100))
    log.append_settle([2, 3, 4])  # lands in a later segment, which now refers to segment 0
    log.append_settle(range(5, 13))  # every message enqueued after segment 0 is settled
    sync(store)
    log.append_settle([])
    enqueue(log, 13)
    sync(store)  # a second batch: deletions wait for their references' deletions to be durable
    store, log, recovered = open_log(tmp_path, max_segment_size=600)
    assert seqs(recovered) == [1, 13]
    log.append_settle([1])
    sync(store)
    enqueue(log, 14)
    sync(store)
    assert seqs(open_log(tmp_path, max_segment_size=600)[2]) == [13, 14]


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
