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
Paged = tuple[int, bytes, bytes, bytes]  # seq, names_raw, properties_raw, body
_PAGE = frozenset((records.PAGE,))
# A record larger than this is read a piece at a time, so that each body is the buffer pread filled rather
# than a slice copied out of the whole record (which would hold a large body twice). Smaller ones (a chunk
# of ordinary messages) are read in one call.
LARGE_READ = 4 * 1024 * 1024


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
        self.size = os.fstat(self.fd).st_size

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self.fd, size, offset)
        while len(data) < size:  # a regular file returns short reads only at its end
            more = os.pread(self.fd, size - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    def read_exactly(self, offset: int, size: int, check: records.PieceCheck) -> bytes | None:
        """`size` bytes at `offset`, added to `check`; None if the file ends first."""
        data = self.read(offset, size)
        if len(data) != size:
            return None
        check.add(data)
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


def _header(segment: _Segment, offset: int, kinds: frozenset[int]) -> records.PieceCheck | None:
    header = segment.read(offset, records.HEADER_SIZE)
    if len(header) != records.HEADER_SIZE:
        return None
    check = records.PieceCheck(header, segment.salt, kinds)
    if not check.plausible or offset + records.HEADER_SIZE + check.length > segment.size:
        return None  # (a damaged length is not even read: its CRC is checked once the pieces are)
    return check


def _read_enqueue(segment: _Segment, offset: int, names: dict[bytes, str]) -> Enqueued | None:
    """The enqueue record at `offset` on its own; a large one in pieces (the body a buffer of its own)."""
    check = _header(segment, offset, records.ENQUEUES)
    if check is None:
        return None
    if check.length <= LARGE_READ:
        return _decode(segment.read(offset, records.HEADER_SIZE + check.length), 0, segment.salt, names)
    pos = offset + records.HEADER_SIZE
    skip = records.DEADLINE_SIZE if check.kind == records.ENQUEUE_EXPIRING else 0
    head = segment.read_exactly(pos, skip + records.ENQUEUE_HEAD_SIZE, check)
    if head is None:
        return None
    front_size = skip + records.enqueue_front_size(head, skip)
    rest = segment.read_exactly(pos + len(head), front_size - len(head), check)
    body = segment.read_exactly(pos + front_size, check.length - front_size, check)
    if rest is None or body is None or not check.valid:
        return None
    front = head + rest
    try:
        seq, exchange, routing_key, properties_raw, _ = records.decode_enqueue(front, skip, front_size, names)
    except (ValueError, UnicodeDecodeError, struct.error):
        return None
    return seq, exchange, routing_key, properties_raw, body


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
            whole = len(data)
            if len(data) == last - first + records.HEADER_SIZE:
                whole = last - first + records.record_length(data, last - first)
            if whole <= LARGE_READ:
                # The usual chunk: one read spanning every wanted record.
                if whole > len(data):
                    data += segment.read(first + len(data), whole - len(data))
                for at, offset in zip(wanted, offsets, strict=True):
                    found[at] = _decode(data, offset - first, segment.salt, names)
            else:
                for at, offset in zip(wanted, offsets, strict=True):
                    found[at] = _read_enqueue(segment, offset, names)
        except OSError as exc:
            log.error("%s: cannot read paged-out messages: %s", path, exc)
            continue
        finally:
            segment.close()
        for at, offset in zip(wanted, offsets, strict=True):
            if found[at] is None:
                log.error("%s: no readable enqueue record at offset %d", path, offset)
    return found


def _read_page_in_pieces(segment: _Segment, offset: int, length: int) -> list[Paged] | None:
    """A large PAGE record (see read_page) read a message at a time: each body a buffer of its own."""
    check = _header(segment, offset, _PAGE)
    if check is None or records.HEADER_SIZE + check.length != length:
        return None
    pos, end = offset + records.HEADER_SIZE, offset + length
    found: list[Paged] = []
    while pos < end:
        head = segment.read_exactly(pos, records.PAGED_HEAD_SIZE, check)
        if head is None:
            return None
        seq, names_len, props_len, body_len = records.paged_head(head)
        pos += records.PAGED_HEAD_SIZE
        if pos + names_len + props_len + body_len > end:
            return None
        front = segment.read_exactly(pos, names_len + props_len, check)
        body = segment.read_exactly(pos + names_len + props_len, body_len, check)
        if front is None or body is None:
            return None
        found.append((seq, front[:names_len], front[names_len:], body))
        pos += names_len + props_len + body_len
    return found if check.valid else None


def read_page(path: Path, offset: int, length: int) -> list[Paged] | None:
    """The messages of the PAGE record (a page file's run, see pages.py) of `length` bytes at `offset` of
    `path`: (seq, names_raw, properties_raw, body) each; None when it cannot be read (logged)."""
    try:
        segment = _Segment(path)
    except OSError as exc:
        log.error("%s: cannot read paged-out messages: %s", path, exc)
        return None
    try:
        if length > LARGE_READ:
            messages = _read_page_in_pieces(segment, offset, length)
            if messages is None:
                log.error("%s: no readable run of paged-out messages at offset %d", path, offset)
            return messages
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
