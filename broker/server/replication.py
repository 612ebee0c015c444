"""Replicated queues' I/O: replica files, the leader's shipping to its followers, the followers' handlers.

Leader (`_lead`, one task per queue it leads, with one shipping task per follower): a follower is first
probed (its end offset and last epoch), truncated by Kafka's rule (to where its last epoch ends in the
leader's log) or sent a snapshot when that point is below the leader's log base, then sent the entries
from there on, one `repl.append` request per batch of up to `_BATCH_BYTES`, each waiting for the reply
(the follower's durable end) before the next. What the queue appended while a request was out goes in
the next one, so batches grow with the load. A follower whose request fails or takes longer than
`peer_timeout` is reported lagging (it leaves the in-sync set); one that has acked the leader's whole log
is reported caught up (it joins it again). The leader's own records are written and fsynced by its
writer task. Confirms are released after every ack and write (broker/cluster/replication.py's rule).

Follower (`repl.probe`, `repl.append`, `repl.snapshot` handlers): a request stamped with an epoch older
than the newest it saw is refused; an append that does not start at its end is refused (the leader
probes again); entries are applied to its `ReplicaLog` and fsynced to its replica file before the reply.
"""

from __future__ import annotations

import logging
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from leveret.broker.cluster import replica_file
from leveret.broker.cluster.leadership import Deposed, Effect, Elected
from leveret.broker.cluster.replica import (
    ReplicaLog,
    decode_entries,
    decode_snapshot,
    encode_entries,
    encode_snapshot,
)
from leveret.broker.cluster.replica_file import ReplicaFile
from leveret.broker.cluster.replication import LeaderQueue, QueueId, ReplicatedJournal
from leveret.broker.cluster.roles import build_leader_queue
from leveret.broker.server.peers import PeerError, PeerLinks, PeerRefused

if TYPE_CHECKING:
    from leveret.broker.node import Node
    from leveret.broker.queues.queue import Queue

log = logging.getLogger(__name__)

PROBE = "repl.probe"
APPEND = "repl.append"
SNAPSHOT = "repl.snapshot"

_BATCH_BYTES = 1 << 20
_IDLE = 0.5  # a shipping task looks again at least this often
_WRITER_TICK = 0.05  # the leader's writer re-checks its confirms (the ISR may have changed)
_RETRY = 0.2
_DISK_RETRY = 1.0  # after a failed write of the leader's own replica
_STALE = "stale epoch"

_NAMES = struct.Struct(">HH")
_U64 = struct.Struct(">Q")
_APPEND_HEAD = struct.Struct(">QQq")  # epoch, start, truncate to (-1: no)


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
        self.leading: dict[QueueId, _Leading] = {}
        self._elected: dict[QueueId, int] = {}  # elected, waiting for the vhost to hold the queue
        self._nursery: trio.Nursery | None = None
        links.handle(PROBE, self._probe)
        links.handle(APPEND, self._append)
        links.handle(SNAPSHOT, self._snapshot)

    def load(self) -> None:
        """Blocking, before the node serves: every replica file back into its log."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.glob("*.log")):
            loaded = replica_file.load(path, self.tail_limit)
            if loaded is None:
                continue
            vhost, name, replica = loaded
            self.replicas[(vhost, name)] = replica
            self.files[(vhost, name)] = ReplicaFile(path, vhost, name)
            log.info("replica of queue %r in vhost %r: %d messages at offset %d (epoch %d)", name, vhost,
                     len(replica.state.held), replica.end, replica.last_epoch)

    def _replica(self, queue: QueueId) -> tuple[ReplicaLog, ReplicaFile]:
        replica = self.replicas.get(queue)
        if replica is None:
            replica = self.replicas[queue] = ReplicaLog(self.tail_limit)
        file = self.files.get(queue)
        if file is None:
            path = self.directory / replica_file.file_name(*queue)
            file = self.files[queue] = ReplicaFile(path, *queue)
        return replica, file

    def _lock(self, queue: QueueId) -> trio.Lock:
        lock = self._locks.get(queue)
        if lock is None:
            lock = self._locks[queue] = trio.Lock()
        return lock

    async def _sync(self, queue: QueueId, file: ReplicaFile) -> None:
        """Write and fsync what the file has pending. On a failure (a full disk) the whole replica is
        written again by the next sync, since part of this one may be on disk: nothing is acked until
        a sync succeeds."""
        async with self._lock(queue):
            if file.dirty:
                try:
                    await trio.to_thread.run_sync(file.sync, file.take())
                except OSError as error:
                    log.error("queue %r in vhost %r: writing its replica failed: %s", queue[1], queue[0],
                              error)
                    file.rewrite(self.replicas[queue])
                    raise

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
        del self._elected[queue]
        self._stop_leading(queue)
        replica, file = self._replica(queue)
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
        self.cluster.roles.lead(vhost, built)
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
        if leader.commit(leadership.in_sync_members(queue), len(leadership.members(queue)),
                         leadership.is_leader(queue, trio.current_time()), self.cluster.name):
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
            if leader.replica.compact():
                leader.file.rewrite(leader.replica)
            self._commit(leading)

    async def _ship(self, leading: _Leading, node: str) -> None:
        leader = leading.leader
        replica = leader.replica
        queue = leader.queue
        leadership = self.cluster.leadership
        events = leading.ship_events
        timeout = self.links.peer_timeout
        offset: int | None = None
        truncate = -1
        while leader.active:
            try:
                if offset is None:
                    offset, truncate = await self._catch_up_point(leader, node, timeout)
                    continue
                if offset < replica.base:
                    offset = None
                    continue
                in_step = node in leader.joining or node in leadership.in_sync_members(queue)
                if offset >= replica.end and truncate < 0 and in_step:
                    event = events[node] = trio.Event()
                    with trio.move_on_after(_IDLE):
                        await event.wait()
                    continue
                entries = replica.entries_from(offset, _BATCH_BYTES)
                payload = (_queue_head(queue, leader.epoch) + _APPEND_HEAD.pack(0, offset, truncate)
                           + encode_entries(entries))
                with trio.move_on_after(timeout) as scope:
                    reply = await self.links.request(node, APPEND, payload)
                if scope.cancelled_caught:
                    raise PeerError(f"no answer within {timeout} s")
                (end,) = _U64.unpack(reply)
                truncate = -1
                offset = end
                leader.acked[node] = end
                if end >= leader.committed and node not in leadership.in_sync_members(queue):
                    # It holds everything confirmed: from now on confirms wait for it, and it rejoins.
                    leader.joining.add(node)
                    leadership.follower_caught_up(queue, node)
                self._commit(leading)
            except PeerRefused as refusal:
                if _STALE in str(refusal):
                    log.warning("queue %r in vhost %r: %s refused epoch %d as stale", queue[1], queue[0],
                                node, leader.epoch)
                    return
                offset = None  # out of step: probe again
                await trio.sleep(_RETRY)
            except (PeerError, trio.TooSlowError) as error:
                leader.joining.discard(node)
                if node in leadership.in_sync_members(queue):
                    log.warning("queue %r in vhost %r: follower %s out of sync: %s", queue[1], queue[0],
                                node, error)
                leadership.follower_lagging(queue, node)
                offset = None
                await trio.sleep(_RETRY)

    async def _catch_up_point(self, leader: LeaderQueue, node: str, timeout: float) -> tuple[int, int]:
        """Probe the follower; returns the offset to send from and the truncation it needs (-1: none),
        after a snapshot when the point is below this log's base."""
        replica = leader.replica
        with trio.fail_after(timeout):
            reply = await self.links.request(node, PROBE, _queue_head(leader.queue, leader.epoch))
        end, last_epoch = struct.unpack(">QQ", reply)
        point = min(end, replica.end_offset_for(last_epoch))
        if point >= replica.base:
            return point, point if point < end else -1
        snapshot = encode_snapshot(replica.end, replica.epochs, replica.state)
        at = replica.end
        with trio.fail_after(timeout + len(snapshot) / 50e6):
            head = _queue_head(leader.queue, leader.epoch)
            reply = await self.links.request(node, SNAPSHOT, head + snapshot)
        leader.acked[node] = at
        log.info("queue %r in vhost %r: sent %s a snapshot at offset %d", leader.queue[1], leader.queue[0],
                 node, at)
        return _U64.unpack(reply)[0], -1

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

    def _probe(self, source: str, payload: bytes) -> bytes:
        queue, epoch, _ = _read_head(payload)
        if queue in self.leading and self.leading[queue].leader.epoch >= epoch:
            raise ValueError(f"{_STALE}: this node leads epoch {self.leading[queue].leader.epoch}")
        replica, _ = self._check_epoch(queue, epoch)
        return struct.pack(">QQ", replica.end, replica.last_epoch)

    async def _append(self, source: str, payload: bytes) -> bytes:
        queue, epoch, at = _read_head(payload)
        replica, file = self._check_epoch(queue, epoch)
        _, start, truncate = _APPEND_HEAD.unpack_from(payload, at)
        if truncate >= 0 and truncate < replica.end:
            if not replica.truncate(truncate):
                raise ValueError("truncation below the replica's base: a snapshot is needed")
            file.truncate(truncate)
        if start != replica.end:
            raise ValueError(f"append at {start}, replica ends at {replica.end}")
        body = memoryview(payload)[at + _APPEND_HEAD.size:]
        for entry_epoch, record in list(decode_entries(body)):  # all of it decodes, or none is applied
            replica.append(entry_epoch, record)
        replica.start_epoch(epoch)
        file.entries(bytes(body))
        if replica.compact():
            file.rewrite(replica)
        await self._sync(queue, file)
        return _U64.pack(replica.end)

    async def _snapshot(self, source: str, payload: bytes) -> bytes:
        queue, epoch, at = _read_head(payload)
        replica, file = self._check_epoch(queue, epoch)
        end, epochs, state = decode_snapshot(memoryview(payload)[at:])
        replica.install(end, epochs, state)
        file.rewrite(replica)
        await self._sync(queue, file)
        return _U64.pack(replica.end)

