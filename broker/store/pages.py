"""The page file area: messages paged out of memory that no durable log holds (transient messages, and
persistent ones on transient queues), in segment files of the store's format (segments.py, records.py).

Nothing here is durable: no fsync, and the directory is emptied when it is opened, so paged transient
messages never outlive the process. A run (one chunk of a queue) is one PAGE record, written and read
back in one piece; a file is deleted once every run in it is released and appends have moved on.

As in the store, the event loop only frames the records in memory (`append`); `take_io` hands the buffered
writes and the deletions to a `PageIO` whose `run` does the blocking part in a worker thread.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from . import records, segments

log = logging.getLogger(__name__)

# Space comes back a whole file at a time: smaller than the store's segments, since paged messages are
# read back (and released) in order, soon after being written.
DEFAULT_PAGE_FILE_SIZE = 32 * 1024 * 1024


class _PageFile:
    __slots__ = ("index", "path", "salt", "size", "live", "header", "writes")

    def __init__(self, directory: Path, index: int) -> None:
        self.index = index
        self.path = segments.segment_path(directory, index)
        header, self.salt = segments.new_header()
        self.size = len(header)
        self.live = 0  # runs appended and not released
        self.header: bytes | None = header  # written with the first run: no file until one comes
        self.writes: list[tuple[int, records.Buffer]] = []  # not handed to a PageIO yet


class PageRun:
    """Where one run of records is: `length` bytes from `offset` of `file`."""

    __slots__ = ("file", "offset", "length")

    def __init__(self, file: _PageFile, offset: int, length: int) -> None:
        self.file = file
        self.offset = offset
        self.length = length

    @property
    def path(self) -> Path:
        return self.file.path


class PageIO:
    """Writes (no fsync) and deletions for one worker-thread call. After `run`, `failed` holds the indexes
    of the files whose writes failed: the runs in them cannot be read back."""

    def __init__(
        self, writes: list[tuple[_PageFile, list[tuple[int, records.Buffer]]]], deletions: list[Path]
    ) -> None:
        self.writes = writes
        self.deletions = deletions
        self.failed: set[int] = set()

    def run(self) -> None:
        for file, runs in self.writes:
            try:
                segments.write_runs(file.path, runs, sync=False)
            except OSError as exc:
                log.error("writing paged-out messages to %s failed: %s", file.path, exc)
                self.failed.add(file.index)
        for path in self.deletions:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # never written: its only runs were released before their write
            except OSError as exc:
                log.error("cannot delete page file %s: %s", path, exc)


class PageFiles:
    def __init__(self, directory: Path | str, *, max_file_size: int = DEFAULT_PAGE_FILE_SIZE) -> None:
        """Blocking: empties (or creates) `directory`. What a previous process paged out is gone with it."""
        self.directory = Path(directory)
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        self._max_file_size = max_file_size
        self._files: dict[int, _PageFile] = {}
        self._active = self._new_file(0)
        self._doomed: list[_PageFile] = []  # released and no longer appended to: delete with the next PageIO

    def _new_file(self, index: int) -> _PageFile:
        file = self._files[index] = _PageFile(self.directory, index)
        return file

    @property
    def file_count(self) -> int:
        """Page files that exist or will (deleted ones not counted)."""
        return len(self._files)

    def append(self, parts: list[records.Buffer]) -> PageRun:
        """Write the payload `parts` (records.page_parts) as one PAGE record, a run of its own; the bodies in
        it are written from the messages' own buffers (see segments.layout_runs)."""
        size = records.HEADER_SIZE + sum(map(len, parts))
        file = self._active
        if file.size > segments.HEADER_SIZE and file.size + size > self._max_file_size:
            file = self._roll()
        run = PageRun(file, file.size, size)
        if file.header is not None:
            file.writes.append((0, file.header))
            file.header = None
        header = records.parts_header(records.PAGE, parts, file.salt)
        file.writes += segments.layout_runs(file.size, [header, *parts])
        file.size += size
        file.live += 1
        return run

    def _roll(self) -> _PageFile:
        previous = self._active
        self._active = self._new_file(previous.index + 1)
        if not previous.live:
            self._doom(previous)
        return self._active

    def release(self, run: PageRun) -> None:
        """The run's records are not needed any more (read back, or their messages gone)."""
        file = run.file
        file.live -= 1
        if not file.live and file is not self._active:
            self._doom(file)

    def _doom(self, file: _PageFile) -> None:
        del self._files[file.index]
        file.writes.clear()  # nothing in it will be read
        self._doomed.append(file)

    def take_io(self) -> PageIO | None:
        writes = [(file, file.writes) for file in self._files.values() if file.writes]
        if not writes and not self._doomed:
            return None
        for file in self._files.values():
            file.writes = []
        deletions = [file.path for file in self._doomed]
        self._doomed = []
        return PageIO(writes, deletions)
