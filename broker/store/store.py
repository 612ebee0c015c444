"""The message store: one `QueueLog` per durable queue, and group commit over all of them.

    <directory>/queues/<queue id>.<incarnation>/meta.json        {"vhost": ..., "name": ...}
    <directory>/queues/<queue id>.<incarnation>/0000000000.seg   segments (segments.py)

The queue id is a hash of vhost and name (any UTF-8, up to 255 bytes each: too long for a file name
once escaped). A deleted queue's directory is removed by the next batch, after any batch still writing
to it; a queue declared again meanwhile gets the next incarnation, a directory of its own.

Every append takes the next write position. A caller confirms a publish once `durable_position` reaches
the position its last append returned (or `append_position` right after it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from . import segments
from .group_commit import LogWork, SyncBatch
from .queue_log import Pending, QueueLog

log = logging.getLogger(__name__)

DEFAULT_MAX_SEGMENT_SIZE = 64 * 1024 * 1024
_META = "meta.json"
_CREATING = ".creating"


class Store:
    def __init__(self, directory: Path | str, *, max_segment_size: int = DEFAULT_MAX_SEGMENT_SIZE) -> None:
        """Opens (creating it if needed) a store. Blocking: it lists and cleans up the queue directories."""
        self.directory = Path(directory)
        self._queues = self.directory / "queues"
        self._queues.mkdir(parents=True, exist_ok=True)
        self._max_segment_size = max_segment_size
        self._pending = Pending()
        self._reported = 0  # the last position handed to a batch
        self._durable = 0
        self._batch: SyncBatch | None = None
        self._logs: dict[str, QueueLog] = {}
        self._removals: list[QueueLog] = []
        self._incarnation: dict[str, int] = {}  # queue id -> the highest incarnation ever seen or made
        self._on_disk: dict[str, Path] = {}  # queue id -> directory of its live incarnation
        self._scan_queues()

    def _scan_queues(self) -> None:
        found: dict[str, list[int]] = {}
        for entry in os.scandir(self._queues):
            queue_id, _, incarnation = entry.name.partition(".")
            if incarnation.isdigit():
                found.setdefault(queue_id, []).append(int(incarnation))
            elif entry.name.endswith(_CREATING):  # a creation a crash interrupted
                shutil.rmtree(entry.path)
            else:
                log.warning("%s: ignoring %s, not a queue log", self._queues, entry.name)
        for queue_id, incarnations in found.items():
            incarnations.sort()
            # Older incarnations were deleted queues whose removal a crash interrupted.
            for old in incarnations[:-1]:
                shutil.rmtree(self._queues / f"{queue_id}.{old}")
            self._incarnation[queue_id] = incarnations[-1]
            self._on_disk[queue_id] = self._queues / f"{queue_id}.{incarnations[-1]}"
        segments.fsync_directory(self._queues)

    @staticmethod
    def queue_id(vhost: str, name: str) -> str:
        """A stable, file-name-safe key for a queue."""
        return hashlib.sha256(json.dumps([vhost, name]).encode()).hexdigest()[:32]

    def stored_queues(self) -> dict[str, tuple[str, str]]:
        """Queue id -> (vhost, name) of every queue log on disk, opened or not: at start, whatever the
        definitions no longer list is an orphan to `delete_queue`. Blocking (reads small files)."""
        queues = {}
        for queue_id, directory in self._on_disk.items():
            try:
                meta = json.loads((directory / _META).read_text())
                queues[queue_id] = (meta["vhost"], meta["name"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("%s: unreadable %s (%s); leaving this queue log alone", directory, _META, exc)
        return queues

    def open_queue(self, vhost: str, name: str) -> QueueLog:
        """The log of a durable queue, created when missing. Call its `recover()` before appending.
        Blocking when it creates the directory (a few fsyncs)."""
        queue_id = self.queue_id(vhost, name)
        queue_log = self._logs.get(queue_id)
        if queue_log is None:
            directory = self._on_disk.get(queue_id) or self._create(queue_id, vhost, name)
            queue_log = QueueLog(directory, self._pending, self._max_segment_size)
            self._logs[queue_id] = queue_log
        return queue_log

    def _create(self, queue_id: str, vhost: str, name: str) -> Path:
        incarnation = self._incarnation.get(queue_id, 0) + 1
        directory = self._queues / f"{queue_id}.{incarnation}"
        # Built under a temporary name and renamed: a queue directory always has its meta file.
        building = directory.with_name(directory.name + _CREATING)
        building.mkdir(exist_ok=True)  # exists when an earlier attempt failed half-way
        meta = building / _META
        meta.write_text(json.dumps({"vhost": vhost, "name": name}))
        with meta.open("rb+") as file:
            os.fsync(file.fileno())
        segments.fsync_directory(building)
        building.rename(directory)
        segments.fsync_directory(self._queues)
        self._incarnation[queue_id] = incarnation
        self._on_disk[queue_id] = directory
        return directory

    def delete_queue(self, queue_id: str) -> None:
        """Forget a queue's messages for good; its files go with the next batch. Not blocking."""
        directory = self._on_disk.pop(queue_id, None)
        if directory is None:
            return
        queue_log = self._logs.pop(queue_id, None)
        if queue_log is None:  # never opened: an orphan found at start
            queue_log = QueueLog(directory, self._pending, self._max_segment_size)
        queue_log.discard()
        self._removals.append(queue_log)

    @property
    def append_position(self) -> int:
        """The write position the latest append got."""
        return self._pending.position

    @property
    def durable_position(self) -> int:
        """Every append up to this position is on disk (fsynced)."""
        return self._durable

    def begin_sync(self) -> SyncBatch | None:
        """Take everything buffered into a batch, or None when there is nothing to do. Only one batch at
        a time: `complete` the previous one first."""
        if self._batch is not None:
            raise RuntimeError("the previous SyncBatch is not complete")
        if not self._pending.logs and not self._removals:
            return None
        work = []
        for queue_log in list(self._pending.logs):
            writes = queue_log.take_writes()
            deletions = queue_log.claim_deletable({write.segment for write in writes})
            work.append(LogWork(queue_log, writes, deletions))
        new_positions = range(self._reported + 1, self._pending.position + 1)
        self._reported = self._pending.position
        self._batch = SyncBatch(work, self._removals, new_positions)
        self._removals = []
        return self._batch

    def complete(self, batch: SyncBatch) -> int:
        """Apply a batch's outcome (after `run`); returns `durable_position`. When `batch.error` is set,
        the caller must treat `batch.new_positions` as failed (nack those publishes)."""
        if batch is not self._batch:
            raise RuntimeError("not the running SyncBatch")
        self._batch = None
        for item in batch.work:
            item.log.deletions_done(item.deleted, item.failed)
            if batch.error is not None:
                item.log.restore_writes(item.writes)
        if batch.error is None:
            self._durable = batch.new_positions.stop - 1  # the last position taken into the batch
        return self._durable
