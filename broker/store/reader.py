"""Reading paged-out messages back by where they are: an enqueue record of a queue's log (by location, see
queue_log.py), or a run of messages in a page file (pages.py).

Blocking: the pager calls these in a worker thread. Reads never resync past damage as recovery does: a
record that is not exactly where it should be, whole and with a valid CRC, is reported unreadable.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path

from . import records, segments
from .queue_log import split_location

log = logging.getLogger(__name__)

# seq, exchange, routing key, properties, body
Enqueued = tuple[int, str, str, bytes, bytes]
_PAGE = frozenset((records.PAGE,))


class _Segment:
    """An open segment file and its salt, read with pread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            header = self.read(0, segments.HEADER_SIZE)
        except OSError:
            os.close(self.fd)
            raise
        salt = segments.read_salt(header) if len(header) == segments.HEADER_SIZE else None
        if salt is None:
            os.close(self.fd)
            raise OSError(f"{path}: no readable segment header")
        self.salt = salt

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self.fd, size, offset)
        while len(data) < size:  # a regular file returns short reads only at its end
            more = os.pread(self.fd, size - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    def close(self) -> None:
        os.close(self.fd)


def _decode(data: bytes, pos: int, salt: int, names: dict[bytes, str]) -> Enqueued | None:
    found = records.record_at(data, pos, salt)
    if found is None or found[0] not in records.ENQUEUES:
        return None
    kind, start, end = found
    if kind == records.ENQUEUE_EXPIRING:
        start += records.DEADLINE_SIZE  # the deadline: recovery's index has it, a queue keeps its own
    try:
        return records.decode_enqueue(data, start, end, names)
    except (ValueError, UnicodeDecodeError, struct.error):
        return None


def read_enqueues(directory: Path, locations: Sequence[int]) -> list[Enqueued | None]:
    """The enqueue records at `locations` in the queue log in `directory`, in the order given; None for
    each one that cannot be read (logged). One read per segment, spanning its wanted records."""
    found: list[Enqueued | None] = [None] * len(locations)
    by_segment: dict[int, list[int]] = {}  # segment index -> indexes into `locations`
    for at, location_ in enumerate(locations):
        by_segment.setdefault(split_location(location_)[0], []).append(at)
    names: dict[bytes, str] = {}
    for index, wanted in by_segment.items():
        offsets = [split_location(locations[at])[1] for at in wanted]
        path = segments.segment_path(directory, index)
        try:
            segment = _Segment(path)
        except OSError as exc:
            log.error("%s: cannot read paged-out messages: %s", path, exc)
            continue
        try:
            first, last = min(offsets), max(offsets)
            data = segment.read(first, last - first + records.HEADER_SIZE)
            if len(data) == last - first + records.HEADER_SIZE:
                whole = last - first + records.record_length(data, last - first)
                if whole > len(data):
                    data += segment.read(first + len(data), whole - len(data))
        except OSError as exc:
            log.error("%s: cannot read paged-out messages: %s", path, exc)
            continue
        finally:
            segment.close()
        for at, offset in zip(wanted, offsets, strict=True):
            record = found[at] = _decode(data, offset - first, segment.salt, names)
            if record is None:
                log.error("%s: no readable enqueue record at offset %d", path, offset)
    return found


def read_page(path: Path, offset: int, length: int) -> list[tuple[int, bytes, bytes, bytes]] | None:
    """The messages of the PAGE record (a page file's run, see pages.py) of `length` bytes at `offset` of
    `path`: (seq, names_raw, properties_raw, body) each; None when it cannot be read (logged)."""
    try:
        segment = _Segment(path)
    except OSError as exc:
        log.error("%s: cannot read paged-out messages: %s", path, exc)
        return None
    try:
        data = segment.read(offset, length)
    except OSError as exc:
        log.error("%s: cannot read paged-out messages: %s", path, exc)
        return None
    finally:
        segment.close()
    found = records.record_at(data, 0, segment.salt, _PAGE)
    if found is None or found[2] != length:
        log.error("%s: no readable run of paged-out messages at offset %d", path, offset)
        return None
    try:
        return records.decode_page(data, found[1], found[2])
    except (ValueError, struct.error) as exc:
        log.error("%s: malformed run of paged-out messages at offset %d: %s", path, offset, exc)
        return None
