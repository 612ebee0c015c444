"""Reading records back by where they are: enqueue records of a queue log by location, and the page files
that hold paged-out messages no durable log has."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leveret.broker.store import Store, records, segments
from leveret.broker.store.pages import PageFiles
from leveret.broker.store.queue_log import split_location
from leveret.broker.store.reader import read_enqueues, read_page

PROPS = b"\x10\x00\x02"  # delivery_mode 2


def sync(store: Store) -> None:
    batch = store.begin_sync()
    assert batch is not None
    batch.run()
    assert batch.error is None
    store.complete(batch)


def test_enqueue_records_are_read_back_by_location(tmp_path: Path) -> None:
    store = Store(tmp_path, max_segment_size=4096)  # small segments: the records span several
    log = store.open_queue("/", "q")
    log.recover()
    locations = {}
    for seq in range(1, 60):
        log.append_enqueue(seq, "ex", f"key.{seq}", PROPS, b"%d" % seq * 100)
        locations[seq] = log.last_location
        if seq % 7 == 0:
            log.append_settle([seq - 3])  # other records in between
            log.append_delivered(seq - 1)
    sync(store)
    assert len({split_location(at)[0] for at in locations.values()}) > 2

    wanted = [5, 6, 7, 30, 2, 59]  # any order, across segments
    found = read_enqueues(log.directory, [locations[seq] for seq in wanted])
    assert found == [(seq, "ex", f"key.{seq}", PROPS, b"%d" % seq * 100) for seq in wanted]


def test_expiring_enqueue_records_are_read_back_by_location(tmp_path: Path) -> None:
    """A paged-out message of a queue with a TTL: its record holds a deadline ahead of the enqueue."""
    store = Store(tmp_path)
    log = store.open_queue("/", "q")
    log.recover()
    locations = []
    for seq in range(1, 5):
        deadline = 1_700_000_000_000 + seq if seq % 2 else None
        log.append_enqueue(seq, "ex", "key", PROPS, b"body %d" % seq, deadline)
        locations.append(log.last_location)
    sync(store)
    found = read_enqueues(log.directory, locations)
    assert found == [(seq, "ex", "key", PROPS, b"body %d" % seq) for seq in range(1, 5)]


def test_recovery_reports_the_locations_appends_got(tmp_path: Path) -> None:
    store = Store(tmp_path)
    log = store.open_queue("/", "q")
    log.recover()
    appended = []
    for seq in range(1, 5):
        log.append_enqueue(seq, "", "q", PROPS, os.urandom(100))
        appended.append(log.last_location)
    sync(store)
    recovered = Store(tmp_path).open_queue("/", "q").recover()
    assert [message.location for message in recovered] == appended


def test_a_damaged_or_missing_record_reads_as_none_and_the_rest_still_read(tmp_path: Path) -> None:
    store = Store(tmp_path)
    log = store.open_queue("/", "q")
    log.recover()
    at = []
    for seq in range(1, 4):
        log.append_enqueue(seq, "", "q", PROPS, b"body %d" % seq)
        at.append(log.last_location)
    sync(store)
    index, offset = split_location(at[1])
    path = segments.segment_path(log.directory, index)
    data = bytearray(path.read_bytes())
    data[offset + records.HEADER_SIZE + 20] ^= 0xFF  # inside the second record's payload: its CRC fails
    path.write_bytes(bytes(data))

    found = read_enqueues(log.directory, [*at, at[2] + 1, (index + 5) << 40 | 32])
    assert found[0] is not None and found[0][0] == 1
    assert found[1] is None
    assert found[2] is not None and found[2][0] == 3
    assert found[3:] == [None, None]  # not where a record starts; no such segment


def page(first: int, count: int, body: bytes) -> list[records.Buffer]:
    return records.page_parts((seq, b"\x00\x02rk", b"", body) for seq in range(first, first + count))


def run_io(pages: PageFiles) -> set[int]:
    io = pages.take_io()
    if io is None:
        return set()
    io.run()
    return io.failed


def test_page_runs_read_back_and_files_go_when_released(tmp_path: Path) -> None:
    pages = PageFiles(tmp_path / "pages", max_file_size=8192)
    runs = [pages.append(page(n * 10, 3, bytes([n]) * 900)) for n in range(8)]
    assert run_io(pages) == set()
    for n, run in enumerate(runs):
        assert read_page(run.path, run.offset, run.length) == [
            (seq, b"\x00\x02rk", b"", bytes([n]) * 900) for seq in range(n * 10, n * 10 + 3)
        ]
    assert len(segments.list_segments(tmp_path / "pages")) > 2
    for run in runs[:-1]:
        pages.release(run)
    run_io(pages)
    # Every file whose runs are all released is gone, except the one appends still go to.
    assert segments.list_segments(tmp_path / "pages") == [runs[-1].file.index]


def test_a_damaged_run_reads_as_none(tmp_path: Path) -> None:
    pages = PageFiles(tmp_path / "pages")
    run = pages.append(page(1, 3, b"x" * 100))
    run_io(pages)
    data = bytearray(run.path.read_bytes())
    data[run.offset + run.length - 5] ^= 0xFF
    run.path.write_bytes(bytes(data))
    assert read_page(run.path, run.offset, run.length) is None


def test_a_run_released_before_its_write_is_never_written(tmp_path: Path) -> None:
    pages = PageFiles(tmp_path / "pages", max_file_size=4096)
    first = pages.append(page(1, 1, b"x" * 3000))
    pages.release(first)
    pages.append(page(2, 1, b"y" * 3000))  # rolls to a new file: the first is doomed unwritten
    run_io(pages)
    assert segments.list_segments(tmp_path / "pages") == [1]


def test_opening_the_page_area_forgets_what_it_held(tmp_path: Path) -> None:
    pages = PageFiles(tmp_path / "pages")
    pages.append(page(1, 1, b"x"))
    run_io(pages)
    assert segments.list_segments(tmp_path / "pages") == [0]
    PageFiles(tmp_path / "pages")
    assert segments.list_segments(tmp_path / "pages") == []


def test_a_failed_page_write_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pages = PageFiles(tmp_path / "pages")
    run = pages.append(page(1, 1, b"x"))

    def disk_full(*args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", disk_full)
    assert run_io(pages) == {run.file.index}
