"""The history clients record: one JSON object a line, one file per client, merged by time.

Every event has `op`, `t` (CLOCK_MONOTONIC seconds: Python's `time.monotonic()` and node's
`process.hrtime`, so histories of several processes on one machine merge in order) and `client`.

- `publish`: `id` (unique in the whole run), `publisher` (one stream of sequence numbers: a publisher's
  connection incarnation), `seq`, optional `queue` (where it must arrive; absent when an exchange decides).
- `confirm`: `id`, `outcome`: `ack`, `nack` or `unknown` (the connection broke before the broker said).
- `deliver`: `id`, `queue`, `consumer` (a consumer's connection incarnation), `redelivered`, `channel`.
- `ack`: `id`, `queue`, `channel` (sent; AMQP does not answer an ack).
- `settled`: `channel`: a synchronous reply on that channel (basic.qos-ok, channel.close-ok) came back, so
  the broker had handled every ack sent on it before.
- `connect`: `url`: a client's connection (re)opened, to that node.
- `fault`: `kind`, `target`: what the harness did (kill -9, SIGSTOP, a cut link...); optional `url`: the
  AMQP URL of the node it hit (consumers connected there lose their acks with their connection).
- `failover`: `queue`, `leader`, `since`: the harness saw a queue's leadership move (in etcd), at some
  time from `since` (its last look that found the old leader) to `t`; not a fault it made, but, like one,
  a moment when acks in flight may be lost.

A message's id names its publisher and sequence number as `publisher/seq`, so a delivery is traced back to
its publish without the consumer knowing anything else.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

Event = dict[str, Any]


def message_id(publisher: str, seq: int) -> str:
    return f"{publisher}/{seq}"


def split_id(identifier: str) -> tuple[str, int] | None:
    """(publisher, seq) from a message id; None for a body that is no id of ours."""
    publisher, slash, seq = identifier.rpartition("/")
    if not slash or not seq.isdigit() or not publisher:
        return None
    return publisher, int(seq)


class Recorder:
    """Appends events to one client's history file; thread-safe, flushed on `close` (and every
    `flush_every` events, so a client killed mid-run leaves most of its history)."""

    def __init__(self, path: Path, client: str, flush_every: int = 200) -> None:
        self.client = client
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._flush_every = flush_every
        self._pending = 0

    def record(self, op: str, **fields: Any) -> None:
        event = {"op": op, "t": time.monotonic(), "client": self.client, **fields}
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._pending += 1
            if self._pending >= self._flush_every:
                self._file.flush()
                self._pending = 0

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_events(paths: Iterable[Path]) -> list[Event]:
    """Every event of these files, in time order. A torn last line (a client killed while writing) is
    skipped."""
    events: list[Event] = []
    for path in paths:
        events.extend(_read_file(path))
    events.sort(key=lambda event: event["t"])
    return events


def read_directory(directory: Path) -> list[Event]:
    return read_events(sorted(directory.glob("*.jsonl")))


def _read_file(path: Path) -> Iterator[Event]:
    with path.open(encoding="utf-8") as file:
        for line in file:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
