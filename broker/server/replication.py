"""Replicated queues' I/O: replica files, the leader's shipping to its followers, the followers' handlers.

Leader (`_lead`, one task per queue it leads, with one shipping task per follower): a follower is first
probed (its end offset, last epoch and base), truncated by Kafka's rule (to where its last epoch ends in
the leader's log) or sent a snapshot when that point is below either log's base, then sent the entries
from there on in `repl.append` requests of up to `_BATCH_BYTES`, pipelined (broker/cluster/pipeline.py:
a batch goes at once when none is unanswered; while some are, only one of `MIN_BATCH` entries or more, up
to `DEPTH` unanswered, so a backlog streams while small appends are batched by the round trip). A
follower whose request fails or takes longer than `peer_timeout` is reported lagging (it leaves the
in-sync set); one that has acked everything confirmed is reported caught up (it joins it again). The
leader's own records are written and fsynced by its writer task. Confirms are released after every ack
and write (broker/cluster/replication.py's rule).

Follower (`repl.probe`, `repl.append`, `repl.snapshot` handlers, called in the order the requests came): a
request stamped with an epoch older than the newest it saw is refused; an append that does not start at
its end is refused (the leader probes again); entries are applied to its `ReplicaLog` at once, and the
reply waits for an fsync of its replica file that covers them (appends arriving meanwhile share the next
fsync). A reply is refused if a truncation or snapshot removed its entries, or its epoch became stale,
before that fsync ended.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from leveret.broker.cluster import replica_file
from leveret.broker.cluster.leadership import Deposed, Effect, Elected
from leveret.broker.cluster.pipeline import AppendPipeline
from leveret.broker.cluster.replica import (
    ENQUEUE,
    ENQUEUE_AT,
    TAIL_BODIES,
    Held,
    LogEntry,
    Message,
    ReplicaLog,
    ReplicaState,
    compact,
    decode_entries,
    decode_messages,
    decode_snapshot_head,
    encode_entries,
    encode_messages,
    encode_snapshot_head,
    generations_of,
    location,
)
from leveret.broker.cluster.replica_file import ReplicaFile
from leveret.broker.cluster.replication import LeaderQueue, QueueId, ReplicatedJournal
from leveret.broker.cluster.roles import build_leader_queue
from leveret.broker.server.peers import Deferred, PeerError, PeerLinks, PeerRefused, PendingReply
from leveret.broker.server.startup import StartError

if TYPE_CHECKING:
    from leveret.broker.node import Node
    from leveret.broker.queues.queue import Queue

log = logging.getLogger(__name__)

PROBE = "repl.probe"
APPEND = "repl.append"
SNAPSHOT = "repl.snapshot"
POSITION = "repl.position"

_BATCH_BYTES = 1 << 20
_IDLE = 0.5  # a shipping task looks again at least this often
_WRITER_TICK = 0.05  # the leader's writer re-checks its confirms (the ISR may have changed)
_RETRY = 0.2
_DISK_RETRY = 1.0  # after a failed write of the leader's own replica
_STALE = "stale epoch"
# A truncation replays the tail up to its point: up to this many entries on the loop (a few ms), more in
# a worker thread.
_TRUNCATE_ON_LOOP = 5000

_NAMES = struct.Struct(">HH")
_U8 = struct.Struct(">B")
_U64 = struct.Struct(">Q")
# A snapshot's parts: the first carries its head, the last ends it (one part may be both).
_FIRST, _LAST = 1, 2
_APPEND_HEAD = struct.Struct(">QQq")  # where the leader's epoch starts, start, truncate to (-1: no)
_POSITION = struct.Struct(">QQ")  # a replica's last epoch and end offset
# A probe's answer: the follower's end and last epoch, then its base (which an older node does not send).
_PROBE_REPLY = struct.Struct(">QQ")


def _queue_head(queue: QueueId, epoch: int) -> bytes:
    vhost, name = queue[0].encode(), queue[1].encode()
    return _NAMES.pack(len(vhost), len(name)) + vhost + name + _U64.pack(epoch)


def _read_head(payload: bytes) -> tuple[QueueId, int, int]:
    lv, lq = _NAMES.unpack_from(payload, 0)
    at = 4
    vhost = payload[at:at + lv].decode()
    at += lv
    name = payload[at:at + lq].decode()
    at += lq
    (epoch,) = _U64.unpack_from(payload, at)
    return (vhost, name), epoch, at + 8


class _Leading:
    def __init__(self, leader: LeaderQueue, queue: Queue, scope: trio.CancelScope) -> None:
        self.leader = leader
        self.queue = queue
        self.scope = scope
        self.wake = trio.Event()  # the queue appended something, for its writer
        self.ship_events: dict[str, trio.Event] = {}  # each shipping task's, when it waits for more
        # Per follower being caught up or streamed to, the offset it is sent from next: a compaction
        # keeps the entries from the lowest on, so that it goes on without a snapshot.
        self.sending: dict[str, int] = {}

    def entries_to_keep(self) -> int:
        """How many of the log's newest entries a compaction now keeps for the followers (a follower
        further behind than a quarter of the log's length gets a snapshot)."""
        replica = self.leader.replica
        lowest = min(self.sending.values(), default=replica.end)
        return min(replica.end - lowest, replica.tail_limit // 4)


class _Incoming:
    """A snapshot a follower is receiving, part by part: its messages go straight to the new replica
    file; only their locations and flags are kept."""

    def __init__(self, end: int, epochs: list[tuple[int, int]], state: ReplicaState, size: int,
                 generation: int) -> None:
        self.end, self.epochs, self.state = end, epochs, state
        self.size = size  # of the new file so far
        self.generation = generation


class Replication:
    def __init__(self, node: Node, links: PeerLinks, data_dir: Path) -> None:
        assert node.cluster is not None and node.gate is not None
        self.node = node
        self.cluster = node.cluster
        self.links = links
        self.directory = data_dir / "replicas"
        self.tail_limit = node.cluster.config.replica_log_entries
        self.replicas: dict[QueueId, ReplicaLog] = {}
        self.files: dict[QueueId, ReplicaFile] = {}
        self._locks: dict[QueueId, trio.Lock] = {}
        self._rewinds: dict[QueueId, int] = {}  # per queue, how often its replica lost entries
        self.leading: dict[QueueId, _Leading] = {}
        self._elected: dict[QueueId, int] = {}  # elected, waiting for the vhost to hold the queue
        self._incoming: dict[QueueId, _Incoming] = {}
        self._truncating: set[QueueId] = set()  # replicas whose truncation runs in a worker thread
        self._nursery: trio.Nursery | None = None
        links.handle(PROBE, self._probe)
        links.handle(APPEND, self._append)
        links.handle(SNAPSHOT, self._snapshot)
        links.handle(POSITION, self._position)

    def load(self) -> None:
        """Blocking, before the node serves: every replica file back into its log (messages stay on
        disk), generations no longer needed deleted."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in [*self.directory.glob("*.tmp"), *self.directory.glob("*.part")]:
            leftover.unlink()  # a rewrite or a snapshot that never finished
        for name, numbers in sorted(replica_file.generations(self.directory).items()):
            try:
                loaded = replica_file.load(self.directory, name, numbers[-1], self.tail_limit,
                                           self._tail_bodies())
            except replica_file.ReplicaFormatError as error:
                raise StartError(
                    f"{error}: start the build that wrote it, or move {self.directory} away to start "
                    "this node without its replicas (its queues' messages are then only the other nodes')"
                ) from None
            if loaded is None:
                continue
            vhost, queue, replica, file = loaded
            self.replicas[(vhost, queue)] = replica
            self.files[(vhost, queue)] = file
            replica_file.delete(file.forget(replica.generations()))
            log.info("replica of queue %r in vhost %r: %d messages at offset %d (epoch %d)", queue, vhost,
                     len(replica.state.held), replica.end, replica.last_epoch)

    def _tail_bodies(self) -> int:
        """What a replica's tail keeps of bodies in memory: within the node's memory budget."""
        pager = self.node.pager
        return TAIL_BODIES if pager is None else min(TAIL_BODIES, pager.limit // 8)

    def _replica(self, queue: QueueId) -> tuple[ReplicaLog, ReplicaFile]:
        replica = self.replicas.get(queue)
        if replica is None:
            replica = self.replicas[queue] = ReplicaLog(self.tail_limit, self._tail_bodies())
        file = self.files.get(queue)
        if file is None:
            file = self.files[queue] = ReplicaFile(self.directory, *queue)
        return replica, file

    def _lock(self, queue: QueueId) -> trio.Lock:
        lock = self._locks.get(queue)
        if lock is None:
            lock = self._locks[queue] = trio.Lock()
        return lock

    async def _sync(self, queue: QueueId, file: ReplicaFile) -> None:
        """Write and fsync what the file has pending; the messages it put on disk leave memory. On a
        failure (a full disk) the whole replica is written again by the next sync, since part of this
        one may be on disk: nothing is acked until a sync succeeds."""
        async with self._lock(queue):
            if not file.dirty:
                return
            work = file.take()
            truncations = len(self.replicas[queue].truncations) if queue in self.replicas else 0
            try:
                await trio.to_thread.run_sync(file.sync, work)
            except OSError as error:
                log.error("queue %r in vhost %r: writing its replica failed: %s", queue[1], queue[0],
                          error)
                file.rewrite(self.replicas[queue])
                raise
            replica = self.replicas.get(queue)
            if replica is None:
                return
            replica.spill(work[2], since=truncations)
            if work[0] is not None:  # a new generation: older ones may no longer be needed
                await self._forget_generations(replica, file)

    async def _forget_generations(self, replica: ReplicaLog, file: ReplicaFile) -> None:
        """Delete the generations the replica no longer needs (found in a worker thread: a large
        queue's messages take a while to go through). Called holding the queue's lock, so that no sync
        puts messages in an older generation meanwhile."""
        below = file.generation  # a generation begun meanwhile is not looked at
        needed = await trio.to_thread.run_sync(generations_of, replica.locations())
        stale = file.forget(needed, below)
        if stale:
            await trio.to_thread.run_sync(replica_file.delete, stale)

    async def _sync_quietly(self, queue: QueueId, file: ReplicaFile) -> None:
        try:
            await self._sync(queue, file)
        except OSError:
            pass  # logged; tried again

    async def _whole(self, file: ReplicaFile, entries: list[LogEntry]) -> list[LogEntry]:
        """`entries` with each ENQUEUE_AT record's message read back from disk (what a follower gets)."""
        wanted = [record[2] for _, record in entries if record[0] == ENQUEUE_AT]
        if not wanted:
            return entries
        file.pins += 1
        try:
            found = iter(await trio.to_thread.run_sync(file.read, wanted))
        finally:
            file.pins -= 1
        whole: list[LogEntry] = []
        for epoch, record in entries:
            if record[0] == ENQUEUE_AT:
                message = next(found)
                if message is None or message[0] != record[1]:
                    raise PeerError(f"message {record[1]} of the log cannot be read back")
                record = (ENQUEUE, *message)
            whole.append((epoch, record))
        return whole

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                for queue, epoch in list(self._elected.items()):
                    self._start_leading(queue, epoch)
                self._forget_deleted()
                await trio.sleep(_IDLE)

    # ---- roles --------------------------------------------------------------------------------

    def role_changed(self, effect: Effect) -> None:
        if isinstance(effect, Elected):
            self._elected[effect.queue] = effect.epoch
            self._start_leading(effect.queue, effect.epoch)
        elif isinstance(effect, Deposed):
            self._elected.pop(effect.queue, None)
            self._stop_leading(effect.queue)

    def in_sync_changed(self, queue: QueueId) -> None:
        """The ISR changed: the writer looks at the confirms owed now, not at its next tick."""
        leading = self.leading.get(queue)
        if leading is not None:
            leading.wake.set()

    def _start_leading(self, queue: QueueId, epoch: int) -> None:
        vhost = self.node.vhosts.get(queue[0])
        current = vhost.queues.get(queue[1]) if vhost is not None else None
        if vhost is None or current is None or self._nursery is None:
            return  # the metadata watch has not brought the queue yet: tried again shortly
        replica, file = self._replica(queue)
        if replica.state.resident:
            # Messages not on disk yet (a sync under way, or one that failed): built once they are,
            # since the new queue reads what it does not hold from the replica files.
            if not self._lock(queue).locked():
                if not file.dirty:
                    file.rewrite(replica)
                self._nursery.start_soon(self._sync_quietly, queue, file)
            return
        del self._elected[queue]
        self._stop_leading(queue)
        members = self.cluster.leadership.members(queue)
        followers = [node for node in members if node != self.cluster.name]
        gate = self.node.gate
        assert gate is not None
        persistence = self.node.persistence
        wall_clock = persistence.wall_clock if persistence is not None else time.time
        leader = LeaderQueue(queue, epoch, replica, file, gate, followers, wall_clock)
        try:
            built = build_leader_queue(vhost, current, replica.state, ReplicatedJournal(leader),
                                       wall_clock())
        except Exception:  # a bug, never the replica's fault: this queue is not served, the node goes on
            log.exception("queue %r in vhost %r: cannot build the leader's queue", queue[1], queue[0])
            return
        delivered = [seq for seq, held in replica.state.held.items() if held.delivered]
        self.cluster.roles.lead(vhost, built, delivered)
        scope = trio.CancelScope()
        leading = self.leading[queue] = _Leading(leader, built, scope)

        def changed() -> None:
            leading.wake.set()  # the writer fsyncs this node's copy while the followers get theirs
            for event in leading.ship_events.values():
                event.set()

        leader.changed = changed
        log.info("queue %r in vhost %r: leading epoch %d with %d messages", queue[1], queue[0], epoch,
                 built.message_count)
        self._nursery.start_soon(self._lead, leading, followers)

    def _stop_leading(self, queue: QueueId) -> None:
        leading = self.leading.pop(queue, None)
        if leading is None:
            return
        leading.leader.depose()
        leading.scope.cancel()
        vhost = self.node.vhosts.get(queue[0])
        if vhost is not None:
            current = vhost.queues.get(queue[1])
            journal = getattr(current, "journal", None)
            if isinstance(journal, ReplicatedJournal) and journal.leader is leading.leader:
                leading.queue = current  # type: ignore[assignment]  # declared again since it was built
            self.cluster.roles.follow(vhost, leading.queue)
        self.node.confirms_changed()

    def leader_journal(self, vhost: str, name: str) -> ReplicatedJournal | None:
        """The journal for a queue declared again while this node leads it (it logs into the same log)."""
        leading = self.leading.get((vhost, name))
        if leading is None or not leading.leader.active:
            return None
        return ReplicatedJournal(leading.leader)

    def _forget_deleted(self) -> None:
        """Replicas of queues that no longer exist go, with their files."""
        leadership = self.cluster.leadership
        if not leadership.queues_known:
            return  # the queue records are not read yet
        for queue in [q for q in self.replicas if q not in leadership.replicas and q not in self.leading]:
            del self.replicas[queue]
            file = self.files.pop(queue, None)
            if file is not None:
                file.remove()

    # ---- leader ---------------------------------------------------------------------------------

    async def _lead(self, leading: _Leading, followers: list[str]) -> None:
        with leading.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_own, leading)
                for node in followers:
                    nursery.start_soon(self._ship, leading, node)

    def _commit(self, leading: _Leading) -> None:
        leader = leading.leader
        leadership = self.cluster.leadership
        queue = leader.queue
        if leader.commit(leadership.members(queue), leadership.is_leader(queue, trio.current_time()),
                         self.cluster.name):
            self.node.confirms_changed()

    async def _write_own(self, leading: _Leading) -> None:
        leader = leading.leader
        while True:
            # Confirms owed are looked at often (the ISR may change under them); an idle queue rarely.
            with trio.move_on_after(_WRITER_TICK if leader.tickets else _IDLE):
                await leading.wake.wait()
            leading.wake = trio.Event()
            end = leader.take_writes()
            if leader.file.dirty:
                try:
                    await self._sync(leader.queue, leader.file)
                except OSError:
                    await trio.sleep(_DISK_RETRY)  # its confirms wait meanwhile
                    continue
            leader.local_durable = end
            if leader.replica.compact(leading.entries_to_keep()):
                leader.file.rewrite(leader.replica)
            self._commit(leading)

    async def _ship(self, leading: _Leading, node: str) -> None:
        """Keep one follower in step: probe it, then stream appends to it until a failure, then again."""
        leader = leading.leader
        queue = leader.queue
        leadership = self.cluster.leadership
        timeout = self.links.peer_timeout
        refused = ""  # the last refusal logged: one that repeats is logged once
        while leader.active:
            try:
                offset, truncate = await self._catch_up_point(leading, node, timeout)
                await self._stream(leading, node, AppendPipeline(offset, truncate))
            except PeerRefused as refusal:
                leading.sending.pop(node, None)
                if _STALE in str(refusal):
                    log.warning("queue %r in vhost %r: %s refused epoch %d as stale", queue[1], queue[0],
                                node, leader.epoch)
                    return
                if str(refusal) != refused:
                    refused = str(refusal)
                    log.info("queue %r in vhost %r: %s refused an append (%s): probing it again",
                             queue[1], queue[0], node, refused)
                await trio.sleep(_RETRY)  # out of step (or truncated under its appends): probe again
            except (PeerError, trio.TooSlowError) as error:
                leading.sending.pop(node, None)
                leader.joining.discard(node)
                if node in leadership.in_sync_members(queue):
                    log.warning("queue %r in vhost %r: follower %s out of sync: %s", queue[1], queue[0],
                                node, error)
                leadership.follower_lagging(queue, node)
                await trio.sleep(_RETRY)

    async def _stream(self, leading: _Leading, node: str, pipe: AppendPipeline) -> None:
        """Send the log from the probed point on, up to `pipe.depth` appends unanswered; returns when the
        log's base passed the follower (probe again, for a snapshot) or raises the first failure."""
        leader = leading.leader
        replica = leader.replica
        queue = leader.queue
        leadership = self.cluster.leadership
        events = leading.ship_events
        failures: list[Exception] = []

        def wake() -> None:
            event = events.get(node)
            if event is not None:
                event.set()

        async with trio.open_nursery() as nursery:
            while leader.active and not failures and pipe.next >= replica.ship_base:
                leading.sending[node] = pipe.next
                in_step = node in leader.joining or node in leadership.in_sync_members(queue)
                # An empty append is sent only to learn that a lagging follower is back in step.
                empty_probe = not in_step and pipe.in_flight == 0
                if not (pipe.may_send(replica.end) or empty_probe):  # wait for an append or a reply
                    event = events[node] = trio.Event()
                    with trio.move_on_after(_IDLE):
                        await event.wait()
                    continue
                try:
                    # Messages whose bodies are only on disk any more are read back for the follower.
                    entries = await self._whole(leader.file, replica.entries_from(pipe.next, _BATCH_BYTES))
                    start, truncate = pipe.send(len(entries))
                    head = _APPEND_HEAD.pack(leader.epoch_start, start, truncate)
                    payload = _queue_head(queue, leader.epoch) + head + encode_entries(entries)
                    pending = await self.links.submit(node, APPEND, payload)
                except PeerError as error:  # raised here, it would leave the nursery as a group
                    failures.append(error)
                    break
                nursery.start_soon(self._acknowledged, leading, node, pipe, pending, failures, wake)
            nursery.cancel_scope.cancel()
        if failures:
            raise failures[0]

    async def _acknowledged(self, leading: _Leading, node: str, pipe: AppendPipeline,
                            pending: PendingReply, failures: list[Exception],
                            wake: Callable[[], None]) -> None:
        """One append's reply: what the follower now holds durably, and the confirms that releases."""
        leader = leading.leader
        queue = leader.queue
        leadership = self.cluster.leadership
        timeout = self.links.peer_timeout
        try:
            with trio.move_on_after(timeout) as scope:
                reply = await pending.wait()
            if scope.cancelled_caught:
                raise PeerError(f"no answer within {timeout} s")
            (end,) = _U64.unpack(reply)
            moved = pipe.acknowledged(end)
        except (PeerError, ValueError, struct.error) as error:
            failures.append(error if isinstance(error, PeerError) else PeerError(str(error)))
            wake()
            return
        wake()  # a slot is free
        if moved:
            leader.acked[node] = pipe.durable
        if pipe.durable >= leader.committed and node not in leadership.in_sync_members(queue):
            # It holds everything confirmed: from now on confirms wait for it, and it rejoins.
            leader.joining.add(node)
            leadership.follower_caught_up(queue, node)
        self._commit(leading)

    async def _catch_up_point(self, leading: _Leading, node: str, timeout: float) -> tuple[int, int]:
        """Probe the follower; returns the offset to send from and the truncation it needs (-1: none),
        after a snapshot when the point is below this log's base."""
        leader = leading.leader
        replica = leader.replica
        with trio.fail_after(timeout):
            reply = await self.links.request(node, PROBE, _queue_head(leader.queue, leader.epoch))
        end, last_epoch = _PROBE_REPLY.unpack_from(reply)
        base = _U64.unpack_from(reply, _PROBE_REPLY.size)[0] if len(reply) > _PROBE_REPLY.size else 0
        point = replica.catch_up_point(end, last_epoch, base)
        if point is not None:
            return point, point if point < end else -1
        at = leading.sending[node] = replica.end
        await self._send_snapshot(leader, node, timeout)
        leader.acked[node] = at
        log.info("queue %r in vhost %r: sent %s a snapshot at offset %d", leader.queue[1], leader.queue[0],
                 node, at)
        return at, -1

    async def _send_snapshot(self, leader: LeaderQueue, node: str, timeout: float) -> None:
        """The state at the log's end, streamed in parts of about `_BATCH_BYTES`: messages on disk are
        read back a part at a time, so a large queue is never in memory at once."""
        replica, file = leader.replica, leader.file
        state = replica.state.copy()  # as of now: shares the messages, which the live state copies on change
        head = _queue_head(leader.queue, leader.epoch)
        first = encode_snapshot_head(replica.end, replica.epochs, state)
        items = iter(state.held.items())
        file.pins += 1  # the generations its messages are in stay
        try:
            done = False
            while not done:
                batch: list[tuple[int, Held]] = []
                size = 0
                for seq, item in items:
                    batch.append((seq, item))
                    size += item.size + item.properties_size + 64
                    if size >= _BATCH_BYTES:
                        break
                else:
                    done = True
                messages = await self._messages(file, batch)
                flags = (_FIRST if first else 0) | (_LAST if done else 0)
                payload = head + _U8.pack(flags) + first + encode_messages(messages)
                first = b""
                with trio.fail_after(timeout + len(payload) / 50e6):
                    await self.links.request(node, SNAPSHOT, payload)
        finally:
            file.pins -= 1

    async def _messages(self, file: ReplicaFile,
                        batch: list[tuple[int, Held]]) -> list[tuple[Message, bool, int, str]]:
        """The batch's messages whole, with their flags: from memory, or read back from disk."""
        # Which are in memory is decided once, before the read: a sync that ends meanwhile spills the
        # messages it wrote (a frozen state shares them), which would then be missing from both.
        in_memory: dict[int, Message] = {}
        on_disk: list[int] = []
        for seq, item in batch:
            if item.body is None:
                on_disk.append(item.at)
            else:
                assert item.exchange is not None and item.routing_key is not None
                assert item.properties_raw is not None
                in_memory[seq] = (seq, item.exchange, item.routing_key, item.properties_raw, item.body,
                                  item.deadline)
        found = iter(await trio.to_thread.run_sync(file.read, on_disk) if on_disk else ())
        messages: list[tuple[Message, bool, int, str]] = []
        for seq, item in batch:
            message = in_memory.get(seq) or next(found, None)
            if message is None or message[0] != seq:
                raise PeerError(f"message {seq} of the replica cannot be read back")
            messages.append((message, item.delivered, item.returns, item.dead_lettering))
        return messages

    # ---- follower -------------------------------------------------------------------------------

    def _check_epoch(self, queue: QueueId, epoch: int) -> tuple[ReplicaLog, ReplicaFile]:
        replica, file = self._replica(queue)
        if epoch < replica.newest_epoch:
            raise ValueError(f"{_STALE}: {epoch} < {replica.newest_epoch}")
        leading = self.leading.get(queue)
        if leading is not None and leading.leader.epoch < epoch:
            self._stop_leading(queue)  # a newer leader exists: this node's leadership is over
        if epoch > replica.newest_epoch:
            replica.newest_epoch = epoch
        return replica, file

    def _position(self, source: str, payload: bytes) -> bytes:
        """This node's log end for a pre-vote (no epoch: nobody leads the queue when it is asked)."""
        queue, _, _ = _read_head(payload)
        return _POSITION.pack(*self.position(queue))

    def position(self, queue: QueueId) -> tuple[int, int]:
        """(last epoch, end offset) of this node's replica of the queue; (0, 0) without one."""
        replica = self.replicas.get(queue)
        return (0, 0) if replica is None else (replica.last_epoch, replica.end)

    async def positions(self, queue: QueueId, nodes: tuple[str, ...]) -> dict[str, tuple[int, int]]:
        """The log ends of the queue's replicas on `nodes` (this one included) that answer within
        `peer_timeout`, or as soon as they make a majority of the replica set: what an election's
        pre-vote compares (a majority is all it needs, so a paused replica does not hold it up)."""
        found = {self.cluster.name: self.position(queue)}
        majority = len(self.cluster.leadership.members(queue)) // 2 + 1

        async def ask(node: str, scope: trio.CancelScope) -> None:
            try:
                reply = await self.links.request(node, POSITION, _queue_head(queue, 0))
                found[node] = _POSITION.unpack(reply)
            except (PeerError, struct.error):
                return  # not counted
            if len(found) >= majority:
                scope.cancel()

        with trio.move_on_after(self.links.peer_timeout):
            async with trio.open_nursery() as nursery:
                for node in nodes:
                    if node != self.cluster.name and len(found) < majority:
                        nursery.start_soon(ask, node, nursery.cancel_scope)
        return dict(found)

    def _probe(self, source: str, payload: bytes) -> bytes:
        queue, epoch, _ = _read_head(payload)
        if queue in self.leading and self.leading[queue].leader.epoch >= epoch:
            raise ValueError(f"{_STALE}: this node leads epoch {self.leading[queue].leader.epoch}")
        replica, _ = self._check_epoch(queue, epoch)
        return _PROBE_REPLY.pack(replica.end, replica.last_epoch) + _U64.pack(replica.base)

    def _append(self, source: str, payload: bytes) -> Deferred | Awaitable[bytes]:
        """Append in the order the requests came (the link's reader calls this in turn), then answer
        once an fsync covers it: the reader goes on with the next append meanwhile, and appends that
        arrive while one fsync runs share the next one (group commit). A truncation that replays a
        long tail runs in a worker thread first, the reader waiting for it."""
        queue, epoch, at = _read_head(payload)
        if queue in self._truncating:
            raise ValueError("the replica is being truncated")
        replica, file = self._check_epoch(queue, epoch)
        epoch_start, start, truncate = _APPEND_HEAD.unpack_from(payload, at)
        if truncate >= 0 and truncate < replica.end:
            if truncate < replica.base:
                raise ValueError("truncation below the replica's base: a snapshot is needed")
            if truncate - replica.base > _TRUNCATE_ON_LOOP:
                return self._truncate_then_append(source, payload, queue, epoch, truncate)
            replica.truncate(truncate)
            file.truncate(truncate)
            self._rewound(queue)
        if start != replica.end:
            raise ValueError(f"append at {start}, replica ends at {replica.end}")
        body = memoryview(payload)[at + _APPEND_HEAD.size:]
        positions: list[int] = []
        entries = list(decode_entries(body, positions))  # all of it decodes, or none is applied
        if any(record[0] == ENQUEUE_AT for _, record in entries):
            raise ValueError("an append refers to messages on the leader's disk")
        first = replica.end
        for entry_epoch, record in entries:
            replica.append(entry_epoch, record)
        if replica.end >= epoch_start:
            # Only now: an epoch recorded before the entries that precede it would make this log look
            # newer than it is to an election's pre-vote (and to the next leader's truncation).
            replica.start_epoch(epoch)
        file.entries(bytes(body), [(record[1], position, first + index) for index, ((_, record), position)
                                   in enumerate(zip(entries, positions, strict=True)) if position >= 0])
        if replica.compact():
            file.rewrite(replica)
        end, rewinds = replica.end, self._rewinds.get(queue, 0)

        async def durable() -> bytes:
            await self._sync(queue, file)
            # Its entries may be gone since (a newer leader truncated the log, or sent a snapshot): the
            # end it reached would then count entries it did not send, so it is refused instead.
            if self.replicas.get(queue) is not replica or self._rewinds.get(queue, 0) != rewinds:
                raise ValueError("the log was truncated under this append")
            if epoch < replica.newest_epoch:
                raise ValueError(f"{_STALE}: {epoch} < {replica.newest_epoch}")
            return _U64.pack(end)

        return Deferred(durable)

    async def _truncate_then_append(self, source: str, payload: bytes, queue: QueueId, epoch: int,
                                    truncate: int) -> bytes:
        """The replay a truncation needs, off the event loop (a long one would hold it for longer than
        the lease's keepalives can wait), then the append. Nothing changes the replica meanwhile: its
        syncs wait for the lock, and appends from other links are refused (their leader probes again)."""
        replica, file = self._replica(queue)
        self._truncating.add(queue)
        try:
            async with self._lock(queue):
                state = await trio.to_thread.run_sync(replica.state_at, truncate)
                if self.replicas.get(queue) is not replica or epoch < replica.newest_epoch:
                    raise ValueError("the replica changed during its truncation")
                replica.truncate(truncate, state)
                file.truncate(truncate)
                self._rewound(queue)
        finally:
            self._truncating.discard(queue)
        answer = self._append(source, payload)  # the truncation is done: only the append is left
        assert isinstance(answer, Deferred)
        return await answer.wait()

    def _rewound(self, queue: QueueId) -> None:
        """The replica's log lost entries (truncation, snapshot): appends still waiting for their fsync
        must not be acknowledged."""
        self._rewinds[queue] = self._rewinds.get(queue, 0) + 1

    async def _snapshot(self, source: str, payload: bytes) -> bytes:
        """A part of a snapshot (see `_send_snapshot`): its messages are written to the replica's next
        generation as they come; the last part installs it, fsynced, in place of the replica."""
        queue, epoch, at = _read_head(payload)
        replica, file = self._check_epoch(queue, epoch)
        (flags,) = _U8.unpack_from(payload, at)
        body = memoryview(payload)[at + 1:]
        incoming = self._incoming.get(queue)
        if flags & _FIRST:
            end, epochs, state, used = decode_snapshot_head(body)
            body = body[used:]
            file.snapshot_reserve()
            size = await trio.to_thread.run_sync(file.snapshot_begin)
            incoming = self._incoming[queue] = _Incoming(end, epochs, state, size, file.incoming)
        elif incoming is None or incoming.generation != file.incoming:
            raise ValueError("a snapshot part without its beginning")
        if body:
            messages = bytes(body)
            held = list(decode_messages(messages))
            start = incoming.size + replica_file.FRAME_SIZE
            incoming.size = await trio.to_thread.run_sync(file.snapshot_messages, incoming.size, messages)
            state = incoming.state
            for position, seq, item in held:
                item.at = location(incoming.generation, start + position)
                item.version = state.version
                state.messages[seq] = compact(item)
        if not flags & _LAST:
            return _U64.pack(0)
        del self._incoming[queue]
        async with self._lock(queue):
            size = await trio.to_thread.run_sync(file.snapshot_end, incoming.size, incoming.end,
                                                 incoming.epochs, incoming.state)
            file.snapshot_installed(size)
            replica.install(incoming.end, incoming.epochs, incoming.state)
            self._rewound(queue)
            await self._forget_generations(replica, file)
        return _U64.pack(replica.end)
