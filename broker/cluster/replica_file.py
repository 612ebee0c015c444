"""A replica's log on disk: `data_dir/replicas/<hash of vhost and queue>-<generation>.log`, per replicated
queue one current file and the older generations whose messages are still held.

Blocking file work, run by the server in a worker thread. Records are framed
`length (u32) | crc32 (u32) | type (u8) | body`:

    HEADER     JSON {"vhost", "queue", "format"}    first in each file; format: FORMAT (none: 1)
    ENTRIES    epoch-stamped entries (replica.encode_entries)
    TRUNCATE   u64 offset: the entries from there on are gone (a new leader's truncation by epoch)
    SNAPSHOT   replica.encode_refs: the state at an offset, each message by its location, replacing all
               before it
    EPOCH      u64 epoch: a leader's epoch began at the end
    MESSAGES   replica.encode_messages: messages a SNAPSHOT after it refers to

A message is written once, in the ENTRIES record that enqueues it (or a MESSAGES record), and read back
from there by its location (generation, byte offset: replica.location), the way the single-node store
reads paged-out messages from a queue's log. When the log's base moves up, or a snapshot is installed,
a new generation starts with one SNAPSHOT (and the messages not on disk yet), fsynced and renamed into
place; older generations are deleted once nothing the log may still need is in them. The newest
generation is the replica; a torn or damaged record ends it: what came before it is the replica (it
acked nothing after it).

A file of another format (a build whose records differ) is never read as this one's: `load` raises
ReplicaFormatError, and the node does not start (it names the file and both formats).
tests/test_wire_formats.py fails when the records change and FORMAT does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from leveret.broker.cluster.replica import (
    ENQUEUE,
    ENQUEUE_AT,
    FLAGS_SIZE,
    MESSAGE_HEAD,
    REF_SIZE,
    TAIL_BODIES,
    TAIL_LIMIT,
    Message,
    ReplicaLog,
    ReplicaState,
    decode_entries,
    decode_message,
    decode_refs,
    encode_entries,
    encode_messages,
    encode_ref_list,
    encode_refs,
    encode_snapshot_head,
    location,
    message_length,
    split_location,
)

log = logging.getLogger(__name__)

# 1: up to session 5 (no "format" in the header); 2: session 5's entries and snapshots.
FORMAT = 2

HEADER = 1
ENTRIES = 2
TRUNCATE = 3
SNAPSHOT = 4
EPOCH = 5
MESSAGES = 6

_FRAME = struct.Struct(">IIB")
FRAME_SIZE = _FRAME.size
_U64 = struct.Struct(">Q")
# Reading messages back: one read spans the wanted ones when they lie within this much of each other.
_SPAN = 1 << 20

Located = tuple[int, int, int]  # seq, location, offset of its log entry (-1: none)
# A new generation or appends, the messages they put on disk, and the file they go to (the current
# generation's when taken: a rewrite or a snapshot may start another before the worker thread writes).
Work = tuple["_Rewrite | None", bytes, list[Located], Path]


class ReplicaFormatError(ValueError):
    """A replica file written by a build of another format."""

    def __init__(self, path: Path, found: int) -> None:
        super().__init__(f"replica file {path} is in format {found}, this build reads format {FORMAT}")
        self.path, self.found = path, found


def stem(vhost: str, queue: str) -> str:
    return hashlib.sha256(f"{vhost}\0{queue}".encode()).hexdigest()[:32]


def generation_path(directory: Path, name: str, generation: int) -> Path:
    return directory / f"{name}-{generation}.log"


def generations(directory: Path) -> dict[str, list[int]]:
    """Every queue's replica files in `directory`: stem -> generations, ascending."""
    found: dict[str, list[int]] = {}
    for path in directory.glob("*.log"):
        match = re.fullmatch(r"([0-9a-f]{32})-(\d+)\.log", path.name)
        if match:
            found.setdefault(match[1], []).append(int(match[2]))
    return {name: sorted(numbers) for name, numbers in found.items()}


def _frame(kind: int, body: bytes) -> bytes:
    return _FRAME.pack(len(body) + 1, zlib.crc32(body, kind), kind) + body


class _Snapshot:
    """A SNAPSHOT record of a new generation: its head now, its message list (`encode_ref_list`) when
    written. Its size is known from the start (REF_SIZE a message), so appends after it are located."""

    __slots__ = ("head", "state", "placed", "size")

    def __init__(self, head: bytes, state: ReplicaState, placed: dict[int, int]) -> None:
        self.head, self.state, self.placed = head, state, placed
        # The state is the log's base state: replaced, never resized, until the generation is written.
        self.size = _FRAME.size + len(head) + REF_SIZE * len(state.messages)

    def record(self) -> bytes:
        return _frame(SNAPSHOT, self.head + encode_ref_list(self.state, self.placed))


class _Rewrite:
    """A new generation's content: what precedes its snapshot, the snapshot, what follows it."""

    __slots__ = ("prefix", "snapshot", "suffix", "size")

    def __init__(self, prefix: bytes, snapshot: _Snapshot | None, suffix: bytes) -> None:
        self.prefix, self.snapshot, self.suffix = prefix, snapshot, suffix
        self.size = len(prefix) + (snapshot.size if snapshot is not None else 0) + len(suffix)

    def content(self) -> bytes:
        """Blocking work (the worker thread): the whole file."""
        snapshot = self.snapshot.record() if self.snapshot is not None else b""
        return self.prefix + snapshot + self.suffix


class ReplicaFile:
    """Appends waiting for the next `sync`, or a new generation (which supersedes them)."""

    def __init__(self, directory: Path, vhost: str, queue: str, generation: int = 0, size: int = 0) -> None:
        self.directory = directory
        self.vhost, self.queue = vhost, queue
        self.stem = stem(vhost, queue)
        self.generation = generation
        self.size = size  # of the current generation, what is pending included
        self._pending: list[bytes] = []
        self._located: list[Located] = []
        self._rewrite: _Rewrite | None = None
        self.pins = 0  # snapshots being sent from the files: older generations are kept meanwhile
        self.incoming = 0  # the generation a snapshot being received goes to (0: none)
        if generation == 0:
            self._start(b"", [])

    @property
    def path(self) -> Path:
        return generation_path(self.directory, self.stem, self.generation)

    def _header(self) -> bytes:
        header = {"vhost": self.vhost, "queue": self.queue, "format": FORMAT}
        return _frame(HEADER, json.dumps(header).encode())

    def _start(self, body: bytes, located: list[Located]) -> None:
        """A new generation: the header, then `body`, replacing the file and whatever is pending."""
        self.generation = max(self.generation, self.incoming) + 1
        self._rewrite = _Rewrite(self._header() + body, None, b"")
        self.size = self._rewrite.size
        self._pending = []
        self._located = located

    def entries(self, encoded: bytes, messages: Sequence[tuple[int, int, int]] = ()) -> None:
        """Append encoded entries; `messages`: (seq, position in `encoded`, log offset) of each enqueue."""
        if encoded:
            start = self.size + _FRAME.size
            generation = self.generation
            self._located += [(seq, location(generation, start + at), offset) for seq, at, offset in messages]
            frame = _frame(ENTRIES, encoded)
            self._pending.append(frame)
            self.size += len(frame)

    def _append(self, frame: bytes) -> None:
        self._pending.append(frame)
        self.size += len(frame)

    def truncate(self, offset: int) -> None:
        # Pending messages of the dropped entries are written but never located: their seqs may come
        # again from the new leader, with other messages.
        self._located = [item for item in self._located if item[2] < offset]
        self._append(_frame(TRUNCATE, _U64.pack(offset)))

    def epoch(self, epoch: int) -> None:
        self._append(_frame(EPOCH, _U64.pack(epoch)))

    def rewrite(self, replica: ReplicaLog) -> None:
        """A new generation: the replica's base state (its messages by location; those not on disk yet
        written whole) and its tail (by location where on disk). The list of a large queue's messages
        is encoded by the sync, in its worker thread."""
        generation = max(self.generation, self.incoming) + 1
        base = replica.base_state
        resident = [(seq, item) for seq, item in base.messages.items()
                    if not isinstance(item, int) and item.body is not None]
        located: list[Located] = []
        prefix = self._header()
        if resident:
            messages = encode_messages(
                ((seq, item.exchange, item.routing_key, item.properties_raw, item.body,  # type: ignore[misc]
                  item.deadline), item.delivered, item.returns, item.dead_lettering)
                for seq, item in resident)
            starts = _message_positions(messages)
            located += [(seq, location(generation, len(prefix) + _FRAME.size + position), -1)
                        for (seq, _), position in zip(resident, starts, strict=True)]
            prefix += _frame(MESSAGES, messages)
        snapshot = _Snapshot(encode_snapshot_head(replica.base, replica.epochs, base), base,
                             {seq: where for seq, where, _ in located})
        suffix = b""
        if replica.tail:
            tail = [
                (epoch, (ENQUEUE_AT, record[1], where, len(record[5]), len(record[4]), record[6]))
                if record[0] == ENQUEUE and where else (epoch, record)
                for (epoch, record), where in zip(replica.tail, replica.tail_at, strict=True)
            ]
            positions: list[int] = []
            encoded = encode_entries(tail, positions)
            start = len(prefix) + snapshot.size + _FRAME.size
            located += [(record[1], location(generation, start + position), replica.base + index)
                        for index, ((_, record), position) in enumerate(zip(tail, positions, strict=True))
                        if record[0] == ENQUEUE]
            suffix = _frame(ENTRIES, encoded)
        self.generation = generation
        self._rewrite = _Rewrite(prefix, snapshot, suffix)
        self.size = self._rewrite.size
        self._pending = []
        self._located = located

    @property
    def dirty(self) -> bool:
        return bool(self._pending) or self._rewrite is not None

    def take(self) -> Work:
        """What the next sync writes (on the loop thread): a new generation, appends, and the messages
        they put on disk."""
        rewrite, self._rewrite = self._rewrite, None
        appends, self._pending = b"".join(self._pending), []
        located, self._located = self._located, []
        return rewrite, appends, located, self.path

    def sync(self, work: Work) -> None:
        """Blocking: write and fsync `work` (from `take`), to the file it was taken for."""
        rewrite, appends, _, path = work
        if rewrite is not None:
            temporary = path.with_suffix(".tmp")
            with open(temporary, "wb") as out:
                out.write(rewrite.content() + appends)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
            _sync_directory(self.directory)
            return
        if appends:
            with open(path, "ab") as out:
                out.write(appends)
                out.flush()
                os.fsync(out.fileno())

    def forget(self, keep: set[int], below: int | None = None) -> list[Path]:
        """The older generations (below `below`, default the current one) nothing in `keep` (those still
        needed) is in, to delete; none while a snapshot is being sent from them."""
        if self.pins:
            return []
        limit = self.generation if below is None else min(below, self.generation)
        return [generation_path(self.directory, self.stem, generation)
                for generation in generations(self.directory).get(self.stem, [])
                if generation < limit and generation not in keep]

    def remove(self) -> None:
        """Blocking: the queue is gone."""
        self._pending, self._rewrite, self._located = [], None, []
        for generation in generations(self.directory).get(self.stem, []):
            _unlink(generation_path(self.directory, self.stem, generation))

    # ---- reading messages back ---------------------------------------------------------------

    def read(self, locations: Sequence[int]) -> list[Message | None]:
        """Blocking: the messages at `locations` (any generation), in the order given; None for each one
        that cannot be read (logged). One bad location costs only its own message."""
        found: list[Message | None] = [None] * len(locations)
        by_generation: dict[int, list[int]] = {}
        for index, at in enumerate(locations):
            by_generation.setdefault(split_location(at)[0], []).append(index)
        for generation, indexes in by_generation.items():
            path = generation_path(self.directory, self.stem, generation)
            try:
                with open(path, "rb") as source:
                    indexes.sort(key=lambda index: locations[index])
                    offsets = [split_location(locations[i])[1] for i in indexes]
                    for index, message in zip(indexes, _read_sorted(source, offsets, path), strict=True):
                        found[index] = message
            except OSError as error:
                log.error("%s: cannot read %d replicated messages back: %s", path, len(indexes), error)
        return found

    # ---- a snapshot arriving in parts (the follower's side) ----------------------------------

    def snapshot_path(self) -> Path:
        return generation_path(self.directory, self.stem, self.incoming).with_suffix(".part")

    def snapshot_reserve(self) -> None:
        """On the loop: the generation an incoming snapshot will be."""
        self.incoming = max(self.generation, self.incoming) + 1

    def snapshot_begin(self) -> int:
        """Blocking: a new generation's file for an incoming snapshot; returns its size so far."""
        header = self._header()
        with open(self.snapshot_path(), "wb") as out:
            out.write(header)
        return len(header)

    def snapshot_messages(self, at: int, messages: bytes) -> int:
        """Blocking: a part's messages, written at `at` (where the last part ended); returns the end."""
        frame = _frame(MESSAGES, messages)
        with open(self.snapshot_path(), "r+b") as out:
            out.seek(at)
            out.write(frame)
        return at + len(frame)

    def snapshot_end(self, at: int, end: int, epochs: list[tuple[int, int]], state: ReplicaState) -> int:
        """Blocking: the snapshot record after its messages, fsynced; the new generation replaces the
        replica (and whatever was pending for the old one)."""
        frame = _frame(SNAPSHOT, encode_refs(end, epochs, state, {}))
        path = self.snapshot_path()
        with open(path, "r+b") as out:
            out.seek(at)
            out.write(frame)
            out.truncate()
            out.flush()
            os.fsync(out.fileno())
        os.replace(path, self.snapshot_path().with_suffix(".log"))
        _sync_directory(self.directory)
        return at + len(frame)

    def snapshot_installed(self, size: int) -> None:
        """On the loop, after `snapshot_end`: appends go to the new generation from now on."""
        self.generation, self.incoming = self.incoming, 0
        self.size = size
        self._pending, self._rewrite, self._located = [], None, []


def _message_positions(messages: bytes) -> list[int]:
    """Where each message of an encode_messages body starts."""
    positions = []
    at = 0
    view = memoryview(messages)
    while at < len(view):
        positions.append(at)
        at += message_length(bytes(view[at:at + MESSAGE_HEAD])) + FLAGS_SIZE
    return positions


def _read_sorted(source: BinaryIO, offsets: list[int], path: Path) -> Iterator[Message | None]:
    """The messages at `offsets` (ascending), reading spans of nearby ones at once; None (logged) for
    one that cannot be decoded there."""
    span = b""
    span_start = 0
    for offset in offsets:
        if not span_start <= offset <= span_start + len(span) - MESSAGE_HEAD:
            span = os.pread(source.fileno(), _SPAN, offset)
            span_start = offset
        relative = offset - span_start
        message: Message | None = None
        try:
            length = message_length(span[relative:relative + MESSAGE_HEAD])
            if relative + length <= len(span):
                message = decode_message(memoryview(span)[relative:relative + length])
            else:
                data = os.pread(source.fileno(), length, offset)
                if len(data) < length:
                    raise ValueError("it runs past the file's end")
                message = decode_message(data)
        except (ValueError, struct.error) as error:
            log.error("%s: cannot read the replicated message at %d back: %s", path, offset, error)
        yield message


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def delete(paths: Sequence[Path]) -> None:
    """Blocking: generations no longer needed."""
    for path in paths:
        _unlink(path)


def _frames(source: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
    """(position, kind, body) of each sound record, until the first torn or damaged one."""
    at = 0
    while True:
        head = source.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return
        length, crc, kind = _FRAME.unpack(head)
        body = source.read(length - 1) if length >= 1 else b""
        if length < 1 or len(body) != length - 1 or zlib.crc32(body, kind) != crc:
            log.warning("replica file %s: damaged record at byte %d; the rest is ignored", source.name, at)
            return
        yield at, kind, body
        at += _FRAME.size + len(body)


def load(directory: Path, name: str, generation: int, tail_limit: int = TAIL_LIMIT,
         tail_bodies: int = TAIL_BODIES) -> tuple[str, str, ReplicaLog, ReplicaFile] | None:
    """Blocking: read a replica's newest generation back, a record at a time (None if it has no readable
    header). Messages stay on disk: only their locations and flags come back into memory. Raises
    ReplicaFormatError, reading nothing more, when the header says another format."""
    path = generation_path(directory, name, generation)
    names: tuple[str, str] | None = None
    replica = ReplicaLog(tail_limit, tail_bodies)
    size = 0
    with open(path, "rb") as source:
        for at, kind, body in _frames(source):
            size = at + _FRAME.size + len(body)
            if kind == HEADER:
                header = json.loads(body)
                if header.get("format", 1) != FORMAT:
                    raise ReplicaFormatError(path, header.get("format", 1))
                names = (str(header["vhost"]), str(header["queue"]))
            elif kind == ENTRIES:
                positions: list[int] = []
                first = replica.end
                entries = list(decode_entries(body, positions))
                for entry in entries:
                    replica.append(*entry)
                start = at + _FRAME.size
                replica.spill([(record[1], location(generation, start + position), first + index)
                               for index, ((_, record), position) in enumerate(zip(entries, positions,
                                                                                   strict=True))
                               if record[0] == ENQUEUE])
            elif kind == TRUNCATE:
                replica.truncate(_U64.unpack(body)[0])
            elif kind == SNAPSHOT:
                end, epochs, state = decode_refs(body)
                replica.install(end, epochs, state)
            elif kind == EPOCH:
                replica.start_epoch(_U64.unpack(body)[0])
    if names is None:
        return None
    replica.newest_epoch = max(replica.newest_epoch, replica.last_epoch)
    file = ReplicaFile(directory, names[0], names[1], generation, size)
    with open(path, "r+b") as out:
        out.truncate(size)  # a torn record at the end goes: appends follow the last sound one
    return names[0], names[1], replica, file
