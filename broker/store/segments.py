"""Segment files: a queue log is a directory of append-only files named by a growing index.

    header: (b"LVRTSEG1" | salt u32 | crc32 of the 12 bytes before it u32) written twice  -> 32 bytes
    then records (see records.py) framed with the salt

The header is written twice so one damaged sector cannot make a whole segment unreadable: its salt is
needed to check every record in it. Reading is the only place that repairs: it logs every corrupt region,
and truncates a bad tail (a torn write) so no later start meets it again. Appends never go to a segment
written before a restart: each start begins a new one.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .records import Buffer, RecordScanner

log = logging.getLogger(__name__)

SUFFIX = ".seg"
# A record part at least this large (a message body) is written from its own buffer: copying it into the
# buffered writes first would hold it twice until the write.
LARGE_PART = 64 * 1024
_FILE_MAGIC = b"LVRTSEG1"
_HEADER_COPY = struct.Struct("<8sII")
HEADER_SIZE = 2 * _HEADER_COPY.size


def segment_path(directory: Path, index: int) -> Path:
    return directory / f"{index:010d}{SUFFIX}"


def list_segments(directory: Path) -> list[int]:
    """Indexes of the segment files in `directory`, ascending."""
    indexes = []
    for entry in os.scandir(directory):
        stem = entry.name.removesuffix(SUFFIX)
        if stem != entry.name and stem.isdigit():
            indexes.append(int(stem))
    return sorted(indexes)


def new_header() -> tuple[bytes, int]:
    """The header of a new segment and its random salt."""
    salt = int.from_bytes(os.urandom(4), "little")
    copy = struct.pack("<8sI", _FILE_MAGIC, salt)
    copy += struct.pack("<I", zlib.crc32(copy))
    return copy + copy, salt


def read_salt(data: bytes) -> int | None:
    """The salt of a segment whose first HEADER_SIZE bytes are `data`; None when both copies are damaged."""
    for offset in (0, _HEADER_COPY.size):
        magic, salt, crc = _HEADER_COPY.unpack_from(data, offset)
        if magic == _FILE_MAGIC and zlib.crc32(data[offset : offset + 12]) == crc:
            return salt
    return None


class SegmentReader:
    """The records of one segment file, read whole: iterate it once, then call `repair`."""

    def __init__(self, path: Path, data: bytes, salt: int) -> None:
        self.path = path
        self.data = data
        self._scanner = RecordScanner(data, HEADER_SIZE, salt)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return iter(self._scanner)

    def repair(self) -> None:
        """Log the corrupt regions the iteration met, and truncate a bad tail (a torn write)."""
        for offset, length in self._scanner.skipped:
            if offset + length < len(self.data):
                log.warning("%s: skipped %d corrupt bytes at offset %d", self.path, length, offset)
            else:
                log.warning("%s: truncating a torn or corrupt tail of %d bytes at offset %d",
                            self.path, length, offset)
                _truncate(self.path, offset)


def open_segment(path: Path) -> SegmentReader | None:
    """A reader for `path`, or None when its header is unusable.

    A file shorter than its header was torn while being created and holds nothing: it is removed. A
    longer one whose two header copies are both damaged may hold records nobody can check any more: it
    is renamed aside (`.corrupt`) for an operator to look at, never deleted.
    """
    data = path.read_bytes()
    salt = read_salt(data) if len(data) >= HEADER_SIZE else None
    if salt is not None:
        return SegmentReader(path, data, salt)
    if len(data) < HEADER_SIZE:
        log.warning("%s: removing a segment torn while being created (%d bytes)", path, len(data))
        path.unlink()
    else:
        log.error("%s: both header copies are corrupt; renaming it to %s.corrupt", path, path.name)
        path.rename(path.with_name(path.name + ".corrupt"))
    fsync_directory(path.parent)
    return None


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def layout_runs(offset: int, parts: Iterable[bytes | bytearray | memoryview]) -> list[tuple[int, Buffer]]:
    """`parts`, one after the other from `offset`, as (offset, data) runs for `write_runs`: small parts
    copied together, each large one (LARGE_PART) a run of its own, not copied."""
    runs: list[tuple[int, Buffer]] = []
    pending = bytearray()
    start = offset
    for part in parts:
        if len(part) < LARGE_PART:
            pending += part
        else:
            if pending:
                runs.append((start, pending))
                pending = bytearray()
            runs.append((offset, part))
            start = offset + len(part)
        offset += len(part)
    if pending:
        runs.append((start, pending))
    return runs


def write_runs(path: Path, runs: Sequence[tuple[int, Buffer]], sync: bool) -> None:
    """Write each (offset, data) run into `path` (creating it), then fsync it once if `sync`.

    Writing at explicit offsets makes a retry after a failed write idempotent: it overwrites whatever
    part of the failed attempt reached the file.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        for offset, data in runs:
            written = os.pwrite(fd, data, offset)
            while written < len(data):  # rare (a regular file takes whole writes until the disk fills up)
                written += os.pwrite(fd, data[written:], offset + written)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Make creations, renames and removals of entries in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
