"""The broker's use of the store: durable queues' journals, the definitions file, recovery at start.

Synchronous like the rest of the domain. The server's persistence task (broker/server/persistence.py)
runs the blocking parts of a commit in a worker thread and calls `complete` on the loop thread.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pamqp import decode, encode

from leveret.broker.queues.journal import Journal
from leveret.broker.queues.queue import Entry, Queue
from leveret.broker.recovery import restore_queue
from leveret.broker.store import DefinitionsStore, QueueLog, Store, SyncBatch, clean_shutdown
from leveret.broker.store.queue_log import RecoveredLog
from leveret.broker.store.reader import Enqueued, read_enqueues
from leveret.broker.vhost import DEFAULT_EXCHANGE, PREDECLARED, VirtualHost

if TYPE_CHECKING:
    from leveret.broker.exchanges.base import Exchange
    from leveret.broker.queues.paging import Pager

log = logging.getLogger(__name__)

_PREDECLARED_NAMES = {DEFAULT_EXCHANGE, *(name for name, _ in PREDECLARED)}


class AccessOverrides(Protocol):
    """The run-time users, vhosts, permissions and limits the definitions file keeps (broker/admin.py)."""

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, saved: dict[str, Any]) -> None: ...

    def restore_limits(self, saved: dict[str, Any]) -> None: ...


class Node(Protocol):
    """What persistence needs of the node it serves (broker/node.py's Node, which imports this module)."""

    @property
    def vhosts(self) -> Mapping[str, VirtualHost]: ...

    @property
    def pager(self) -> Pager | None: ...

    @property
    def admin(self) -> AccessOverrides: ...


class StoreJournal(Journal):
    """A durable queue's journal: persistent messages go to its log, transient ones nowhere."""

    __slots__ = ("log", "persistence", "queue_id", "recovered")

    def __init__(self, persistence: Persistence, queue_log: QueueLog, queue_id: str) -> None:
        self.persistence = persistence
        self.log = queue_log
        self.queue_id = queue_id
        # What the log held at open (an index, no bodies): empty for a new queue; taken by recovery.
        self.recovered: RecoveredLog | None = queue_log.recover_index(allowance=persistence.memory_room())

    def logs(self, entry: Entry) -> bool:
        return entry.message.delivery_mode == 2

    def read_enqueues(self, locations: Sequence[int]) -> list[Enqueued | None]:
        return read_enqueues(self.log.directory, locations)

    def enqueued(self, entry: Entry, expires_in: float | None = None) -> int:
        message = entry.message
        if message.delivery_mode != 2:
            return 0
        # The log keeps a deadline as wall-clock time: a queue's monotonic clock starts again at a restart.
        deadline = None if expires_in is None else self.persistence.wall_deadline(expires_in)
        position = self.log.append_enqueue(
            entry.seq, message.exchange, message.routing_key, message.properties_raw, message.body, deadline
        )
        entry.logged = self.log.last_location  # where a paged-out copy is read back from
        self.persistence.unconfirmed.append((position, self, entry.seq))
        self.persistence.pending()
        return position

    def delivered(self, entry: Entry) -> None:
        self.log.append_delivered(entry.seq)
        self.persistence.pending(urgent=False)

    def settled(self, entries: Sequence[Entry]) -> None:
        seqs = [entry.seq for entry in entries if entry.logged]
        if seqs:
            self.log.append_settle(seqs)
            self.persistence.pending(urgent=False)

    def returned(self, entries: Sequence[Entry]) -> None:
        seqs = [entry.seq for entry in entries if entry.logged]
        if seqs:
            self.log.append_returned(seqs)
            self.persistence.pending()

    def removed(self, entries: Sequence[Entry], reason: str) -> None:
        seqs = [entry.seq for entry in entries if entry.logged]
        if seqs:
            self.log.append_removed(seqs, reason)
            self.persistence.pending()

    def dead_lettering(self, entries: Sequence[Entry], reason: str) -> None:
        seqs = [entry.seq for entry in entries if entry.logged]
        if seqs:
            self.log.append_dead_lettering(seqs, reason)
            self.persistence.pending()

    def removed_range(self, first: int, last: int, reason: str) -> None:
        self.log.append_removed(range(first, last + 1), reason)
        self.persistence.pending()

    def removed_seqs(self, seqs: Sequence[int], reason: str) -> None:
        self.log.append_removed(seqs, reason)
        self.persistence.pending()

    def settled_seqs(self, seqs: Sequence[int]) -> None:
        self.log.append_settle(seqs)
        self.persistence.pending(urgent=False)

    def deleted(self) -> None:
        self.persistence.store.delete_queue(self.queue_id)
        self.persistence.pending()


class Commit:
    """One group commit: the store's batch and, when they changed, the definitions to save."""

    def __init__(
        self, batch: SyncBatch | None, definitions: dict[str, Any] | None, store: DefinitionsStore
    ) -> None:
        self.batch = batch
        self.definitions = definitions
        self._definitions_store = store
        self.error: OSError | None = None

    def run(self) -> None:
        """Blocking: in a worker thread. Definitions first, so a confirmed message's queue is on disk."""
        if self.definitions is not None:
            try:
                self._definitions_store.save(self.definitions)
            except OSError as exc:
                log.error("saving definitions failed: %s", exc)
                self.error = exc
        if self.batch is not None:
            self.batch.run()
            self.error = self.error or self.batch.error


class Persistence:
    def __init__(self, data_dir: Path | str) -> None:
        """Blocking: opens (and tidies) the store."""
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        # After a crash every recovered message is flagged redelivered (see store/clean_shutdown.py).
        self.after_crash = not clean_shutdown.take(directory)
        self.store = Store(directory / "messages")
        self.definitions_store = DefinitionsStore(directory / "definitions.json")
        self.node: Node | None = None
        self._definitions_dirty = False
        self._pending = False
        self._urgent = False  # something pending has a waiter (see `pending`)
        # Persistent enqueues not reported on yet, in position order: (write position, journal, seq).
        self.unconfirmed: deque[tuple[int, StoreJournal, int]] = deque()
        # Those a failed commit reported on (see `take_unstored`).
        self._unstored: dict[StoreJournal, list[int]] = {}
        self.wake: Callable[[], None] = lambda: None  # the server's persistence task sets this
        # Seconds since the epoch: what logged deadlines are measured by (tests set a fake one).
        self.wall_clock: Callable[[], float] = time.time

    def wall_deadline(self, expires_in: float) -> int:
        """The deadline `expires_in` seconds from now, in ms since the epoch (rounded up: never early)."""
        return math.ceil((self.wall_clock() + expires_in) * 1000)

    def pending(self, urgent: bool = True) -> None:
        """Something waits to be committed: wake the persistence task once per batch, and once more when
        the first urgent record joins it. Not urgent: records nobody waits for (acks, first deliveries),
        which the persistence task may hold back a moment for the next urgent one (a publish) to share
        its fsync."""
        if urgent and not self._urgent:
            self._urgent = self._pending = True
            self.wake()
        elif not self._pending:
            self._pending = True
            self.wake()

    @property
    def urgent(self) -> bool:
        """What is pending includes something a client, a confirm or a waiter is waiting for."""
        return self._urgent

    def definitions_changed(self) -> None:
        self._definitions_dirty = True
        self.pending()

    def memory_room(self) -> int:
        """How much of the message memory budget is free: what recovery may keep of a log as it scans it."""
        pager = self.node.pager if self.node is not None else None
        return max(pager.limit - pager.used, 0) if pager is not None else 0

    def journal_for(self, vhost: str, name: str) -> StoreJournal:
        """Blocking: opens (or creates) the queue's directory and reads what it holds."""
        return StoreJournal(self, self.store.open_queue(vhost, name), Store.queue_id(vhost, name))

    @property
    def durable_position(self) -> int:
        return self.store.durable_position

    # ---- commits ------------------------------------------------------------------------------

    def begin(self) -> Commit | None:
        self._pending = self._urgent = False
        definitions = None
        if self._definitions_dirty and self.node is not None:
            definitions = snapshot_definitions(self.node)
            self._definitions_dirty = False
        batch = self.store.begin_sync()
        if batch is None and definitions is None:
            return None
        return Commit(batch, definitions, self.definitions_store)

    def complete(self, commit: Commit) -> range | None:
        """Apply a finished commit; returns the write positions that failed (to nack), if any."""
        if commit.batch is not None:
            self.store.complete(commit.batch)
        if commit.error is not None and commit.definitions is not None:
            self._definitions_dirty = True  # try again with the next commit
        unconfirmed = self.unconfirmed
        if commit.error is not None and commit.batch is not None:
            failed = commit.batch.new_positions
            while unconfirmed and unconfirmed[0][0] < failed.stop:
                _, journal, seq = unconfirmed.popleft()
                self._unstored.setdefault(journal, []).append(seq)
            return failed
        durable = self.store.durable_position
        while unconfirmed and unconfirmed[0][0] <= durable:
            unconfirmed.popleft()
        return None

    def take_unstored(self) -> dict[StoreJournal, list[int]]:
        """The seqs, by queue journal, of persistent enqueues that failed commits reported on since the
        last call: nacked. The store retries their writes (it cannot drop records from the middle of a
        log's buffer), so their queues must discard them and settle them behind those writes."""
        unstored, self._unstored = self._unstored, {}
        return unstored

    def close(self) -> None:
        """Blocking, once nothing appends any more: commit what is left and, when that succeeds, mark the
        stop as clean."""
        commit = self.begin()
        if commit is not None:
            commit.run()
            self.complete(commit)
            if commit.error is not None:
                log.error("last commit failed (%s): the next start recovers as after a crash", commit.error)
                return
        clean_shutdown.leave(self.directory)

    # ---- recovery ---------------------------------------------------------------------------

    def recover(self, node: Node) -> int:
        """Rebuild durable exchanges, queues (with their messages) and bindings. Blocking; call before
        serving. Returns the number of messages recovered."""
        self.node = node
        saved = self.definitions_store.load()
        node.admin.restore(saved.get("access", {}))
        recovered = 0
        live_queue_ids = set()
        for vhost_name, definitions in (saved.get("vhosts") or {}).items():
            vhost = node.vhosts.get(vhost_name)
            if vhost is None:
                log.warning(
                    "definitions name vhost %r, which the configuration no longer has; skipped", vhost_name
                )
                continue
            for item in definitions.get("exchanges", []):
                if item["name"] not in vhost.exchanges:
                    vhost.declare_exchange(
                        item["name"],
                        item["type"],
                        durable=True,
                        auto_delete=item["auto_delete"],
                        internal=item["internal"],
                        arguments=_decode_table(item["arguments"]),
                    )
            for item in definitions.get("queues", []):
                queue = vhost.declare_queue(
                    item["name"],
                    owner=None,
                    durable=True,
                    exclusive=False,
                    auto_delete=item["auto_delete"],
                    arguments=_decode_table(item["arguments"]),
                    restoring=True,
                )
                if isinstance(queue.journal, StoreJournal):  # else a cluster's replicated queue
                    live_queue_ids.add(Store.queue_id(vhost_name, queue.name))
                    recovered += self._recover_messages(queue)
            for item in definitions.get("bindings", []):
                source = vhost.exchanges.get(item["source"])
                destination: Any = (
                    vhost.queues if item["destination_type"] == "queue" else vhost.exchanges
                ).get(item["destination"])
                if source is not None and destination is not None:
                    source.bind(destination, item["routing_key"], _decode_table(item["arguments"]))
        for queue_id in set(self.store.stored_queues()) - live_queue_ids:
            self.store.delete_queue(queue_id)
        node.admin.restore_limits(saved.get("access", {}))
        return recovered

    def _recover_messages(self, queue: Queue) -> int:
        journal = queue.journal
        assert isinstance(journal, StoreJournal) and journal.recovered is not None
        recovered, journal.recovered = journal.recovered, None
        log = journal.log
        return restore_queue(
            queue, journal.read_enqueues, recovered, log.last_seq + 1, self.after_crash, self.wall_clock()
        )


def is_durable_queue(queue: Queue) -> bool:
    return queue.durable and not queue.exclusive


def snapshot_definitions(node: Node) -> dict[str, Any]:
    """Every durable exchange, queue and binding, bindings in bind order (the consistent-hash ring's), and
    the run-time changes to users, vhosts, permissions and vhost limits."""
    vhosts = {}
    for vhost in node.vhosts.values():
        vhosts[vhost.name] = {
            "exchanges": [
                _exchange_record(e)
                for e in vhost.exchanges.values()
                if e.durable and e.name not in _PREDECLARED_NAMES
            ],
            "queues": [_queue_record(q) for q in vhost.queues.values() if is_durable_queue(q)],
            "bindings": _binding_records(vhost),
        }
    # "access": users, vhosts, permissions and vhost limits changed at run time (broker/admin.py).
    return {"version": 1, "vhosts": vhosts, "access": node.admin.snapshot()}


def _exchange_record(exchange: Exchange) -> dict[str, Any]:
    return {
        "name": exchange.name,
        "type": exchange.kind,
        "auto_delete": exchange.auto_delete,
        "internal": exchange.internal,
        "arguments": _encode_table(exchange.arguments),
    }


def _queue_record(queue: Queue) -> dict[str, Any]:
    return {"name": queue.name, "auto_delete": queue.auto_delete, "arguments": _encode_table(queue.arguments)}


def _binding_records(vhost: VirtualHost) -> list[dict[str, Any]]:
    records = []
    for exchange in vhost.exchanges.values():
        if not exchange.durable or exchange.name == DEFAULT_EXCHANGE:
            continue
        for binding in exchange.bindings:
            destination = binding.destination
            if isinstance(destination, Queue):
                if not is_durable_queue(destination):
                    continue
                kind = "queue"
            elif destination.durable:
                kind = "exchange"
            else:
                continue
            records.append(
                {
                    "source": exchange.name,
                    "destination": destination.name,
                    "destination_type": kind,
                    "routing_key": binding.routing_key,
                    "arguments": _encode_table(binding.arguments),
                }
            )
    return records


def _encode_table(table: dict[str, Any]) -> str:
    """Field tables keep their AMQP types (bytes, timestamps, decimals): stored as encoded tables."""
    return base64.b64encode(encode.field_table(_encodable(table))).decode() if table else ""


def _encodable(value: Any) -> Any:
    """pamqp reads a long string that is not UTF-8 as bytes, and cannot write bytes back: such a value
    (a client may send one) is stored as a byte array, which compares equal to it."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {key: _encodable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    return value


def _decode_table(text: str) -> dict[str, Any]:
    return decode.field_table(base64.b64decode(text))[1] if text else {}
