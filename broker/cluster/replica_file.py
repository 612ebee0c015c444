"""A replica's log on disk: `data_dir/replicas/<hash of vhost and queue>.log`, one per replicated queue.

Blocking file work, run by the server in a worker thread (`sync`). Records are framed
`length (u32) | crc32 (u32) | type (u8) | body`:

    HEADER     JSON {"vhost", "queue"}              first in each file
    ENTRIES    epoch-stamped entries (replica.encode_entries)
    TRUNCATE   u64 offset: the entries from there on are gone (a new leader's truncation by epoch)
    SNAPSHOT   replica.encode_snapshot: the state at an offset, replacing all before it
    EPOCH      u64 epoch: a leader's epoch began at the end

A file is rewritten as one snapshot (to a temporary file, fsynced, renamed) when the log's base moves
up or a snapshot is installed, so it never grows past about TAIL_LIMIT entries beyond a snapshot. A
torn or damaged record ends the file: what came before it is the replica (it acked nothing after it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zlib
from pathlib import Path

from leveret.broker.cluster.replica import (
    TAIL_LIMIT,
    ReplicaLog,
    decode_entries,
    decode_snapshot,
    encode_entries,
    encode_snapshot,
)

log = logging.getLogger(__name__)

HEADER = 1
ENTRIES = 2
TRUNCATE = 3
SNAPSHOT = 4
EPOCH = 5

_FRAME = struct.Struct(">IIB")
_U64 = struct.Struct(">Q")


def file_name(vhost: str, queue: str) -> str:
    return hashlib.sha256(f"{vhost}\0{queue}".encode()).hexdigest()[:32] + ".log"


def _frame(kind: int, body: bytes) -> bytes:
    return _FRAME.pack(len(body) + 1, zlib.crc32(body, kind), kind) + body


class ReplicaFile:
    """Appends waiting for the next `sync`, or a whole rewrite (which supersedes them)."""

    def __init__(self, path: Path, vhost: str, queue: str) -> None:
        self.path = path
        self.vhost, self.queue = vhost, queue
        self._pending: list[bytes] = []
        self._rewrite: bytes | None = None
        self._exists = path.exists()
        if not self._exists:
            self._rewrite = self._header()

    def _header(self) -> bytes:
        return _frame(HEADER, json.dumps({"vhost": self.vhost, "queue": self.queue}).encode())

    def entries(self, encoded: bytes) -> None:
        if encoded:
            self._pending.append(_frame(ENTRIES, encoded))

    def truncate(self, offset: int) -> None:
        self._pending.append(_frame(TRUNCATE, _U64.pack(offset)))

    def epoch(self, epoch: int) -> None:
        self._pending.append(_frame(EPOCH, _U64.pack(epoch)))

    def rewrite(self, replica: ReplicaLog) -> None:
        """Replace the file by the replica's base state and its tail."""
        parts = [self._header(), _frame(SNAPSHOT, encode_snapshot(replica.base, replica.epochs,
                                                                   replica.base_state))]
        if replica.tail:
            parts.append(_frame(ENTRIES, encode_entries(replica.tail)))
        self._rewrite = b"".join(parts)
        self._pending = []

    @property
    def dirty(self) -> bool:
        return bool(self._pending) or self._rewrite is not None

    def take(self) -> tuple[bytes | None, bytes]:
        """What the next sync writes (on the loop thread): a rewrite, and appends after it."""
        rewrite, self._rewrite = self._rewrite, None
        appends, self._pending = b"".join(self._pending), []
        return rewrite, appends

    def sync(self, work: tuple[bytes | None, bytes]) -> None:
        """Blocking: write and fsync `work` (from `take`)."""
        rewrite, appends = work
        if rewrite is not None:
            temporary = self.path.with_suffix(".tmp")
            with open(temporary, "wb") as out:
                out.write(rewrite + appends)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            return
        if appends:
            with open(self.path, "ab") as out:
                out.write(appends)
                out.flush()
                os.fsync(out.fileno())

    def remove(self) -> None:
        """Blocking: the queue is gone."""
        self._pending, self._rewrite = [], None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def load(path: Path, tail_limit: int = TAIL_LIMIT) -> tuple[str, str, ReplicaLog] | None:
    """Blocking: read a replica file back (None if it has no readable header)."""
    data = path.read_bytes()
    at = 0
    names: tuple[str, str] | None = None
    replica = ReplicaLog(tail_limit)
    while at + _FRAME.size <= len(data):
        length, crc, kind = _FRAME.unpack_from(data, at)
        body = data[at + _FRAME.size: at + 8 + length]
        if length < 1 or len(body) != length - 1 or zlib.crc32(body, kind) != crc:
            log.warning("replica file %s: damaged record at byte %d; the rest is ignored", path, at)
            break
        at += 8 + length
        if kind == HEADER:
            header = json.loads(body)
            names = (str(header["vhost"]), str(header["queue"]))
        elif kind == ENTRIES:
            for epoch, record in decode_entries(body):
                replica.append(epoch, record)
        elif kind == TRUNCATE:
            replica.truncate(_U64.unpack(body)[0])
        elif kind == SNAPSHOT:
            end, epochs, state = decode_snapshot(body)
            replica.install(end, epochs, state)
        elif kind == EPOCH:
            replica.start_epoch(_U64.unpack(body)[0])
    if names is None:
        return None
    replica.newest_epoch = max(replica.newest_epoch, replica.last_epoch)
    return names[0], names[1], replica
