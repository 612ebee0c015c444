"""A group commit: one batch of buffered appends written and fsynced together, off the event loop.

`Store.begin_sync` (event loop) takes every log's buffers into a `SyncBatch`; `SyncBatch.run` (a worker
thread) does all the blocking work and touches nothing the event loop may change meanwhile: only the
buffers handed to it, and files; `Store.complete` (event loop again) applies the outcome.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from . import records, segments
from .queue_log import QueueLog, SegmentWrite

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LogWork:
    """What a batch does for one queue log."""

    log: QueueLog
    writes: list[SegmentWrite]
    deletions: list[int]  # segments to delete
    deleted: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


class SyncBatch:
    """Appends up to write position `new_positions[-1]` (or earlier, when empty), their files to fsync,
    segments and whole queue logs to delete.

    After `run`, `error` is None when every write and fsync succeeded: every position up to the last one
    is then durable. Otherwise it is the first OSError met, and none of `new_positions` may be reported
    durable; the store keeps the writes and retries them in the next batch.
    """

    def __init__(self, work: list[LogWork], removals: list[QueueLog], new_positions: range) -> None:
        self.work = work
        self.removals = removals
        self.new_positions = new_positions  # positions this batch is the first to report on
        self.error: OSError | None = None

    def run(self) -> None:
        """The blocking part: safe in a worker thread while the event loop appends to new buffers."""
        try:
            for item in self.work:
                _write(item)
        except OSError as exc:
            log.error("store write failed: %s", exc)
            self.error = exc
        # Deleting needs none of the writes above: a segment being written is never deleted, and
        # freeing space is exactly what a full disk needs.
        for item in self.work:
            _delete_segments(item)
        for queue_log in self.removals:
            try:
                queue_log.delete()
            except OSError as exc:
                # Left behind: the next start finds it and the broker can remove it then.
                log.error("cannot remove deleted queue's log %s: %s", queue_log.directory, exc)


def _write(item: LogWork) -> None:
    by_segment: dict[int, list[SegmentWrite]] = {}
    for write in item.writes:
        by_segment.setdefault(write.segment, []).append(write)
    created = False
    for index, writes in by_segment.items():
        runs: list[tuple[int, records.Buffer]] = [(write.offset, write.data) for write in writes]
        sync = any(write.sync for write in writes)
        segments.write_runs(segments.segment_path(item.log.directory, index), runs, sync)
        created = created or any(write.offset == 0 for write in writes)
    if created:
        segments.fsync_directory(item.log.directory)


def _delete_segments(item: LogWork) -> None:
    for index in item.deletions:
        try:
            os.unlink(segments.segment_path(item.log.directory, index))
        except FileNotFoundError:
            pass  # an earlier attempt's unlink did land
        except OSError as exc:
            log.error("cannot delete settled segment %d of %s: %s", index, item.log.directory, exc)
            item.failed.append(index)
            continue
        item.deleted.append(index)
    if item.deleted:
        try:
            segments.fsync_directory(item.log.directory)
        except OSError as exc:
            # Not durable: keep them counted as existing, so no segment depending on them goes next.
            log.error("cannot fsync %s after deleting segments: %s", item.log.directory, exc)
            item.failed.extend(item.deleted)
            item.deleted.clear()
