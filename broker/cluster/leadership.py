"""Per-queue leadership, sans-IO: decisions from membership and etcd's keys as data, effects as data.

Every replicated queue (durable, not exclusive, server-named or not) has two keys (broker/cluster/keys.py):

- `leader/<vhost>/<queue>`: {"node": name}, put with the leader's lease by a txn that runs only if the
  key is absent. Its create revision is the queue's **epoch**: a new leader always has a higher one. The
  key goes when the lease does (the node killed, paused or cut off for longer than `lease_ttl`).
- `isr/<vhost>/<queue>`: {"members": [...]}, the in-sync replicas. The first leader writes it (all the
  replicas: nothing has been written yet) in the txn that makes it leader; after that only the current
  leader changes it, in a txn guarded by its epoch (the leader key's create revision must still be the
  one it was elected with), so a stale leader cannot.

Candidates: a leader confirms an entry once a majority of the replica set holds it
(broker/cluster/replication.py), so a new leader must be a replica whose log holds every such entry. A
live replica that finds the queue without a leader first asks the replicas for their log ends (`PreVote`:
last epoch, end offset) and campaigns only if a majority answered (itself included) and none of them is
ahead of it (ties go to the first in placement order), Raft's election restriction: every confirmed entry
is on some member of that majority, and a log at least as new as that member's holds it. Another node may
campaign too, from answers a moment old: the txn's compare lets one win. The first leader (no ISR yet:
nothing written) needs no pre-vote; the first live replica campaigns. The ISR no longer decides who may
lead: it lists the members the leader keeps in step (the management API's `online`), and a campaign's
txn still compares it, so it runs only against the ISR the candidate read.

Fencing: a node counts itself leader only while its lease is surely alive, i.e. before the deadline
`lease_renewed` was given (the time a keepalive was sent plus the TTL etcd answered). A node paused for
longer than its lease thus knows, as soon as it runs again and before anything else, that it may no
longer act as leader, even before the watch tells it who leads now.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from leveret.broker.cluster.etcd_ops import Compare, Get, KeyValue, Put, Txn, TxnResult, WatchEvent
from leveret.broker.cluster.keys import KeyLayout
from leveret.broker.cluster.records import QueueRecord

QueueId = tuple[str, str]  # (vhost, queue)


@dataclass(frozen=True, slots=True)
class Campaign:
    """Run this txn: it makes this node the queue's leader if nobody is."""

    queue: QueueId
    txn: Txn


@dataclass(frozen=True, slots=True)
class ChangeInSync:
    """Run this txn: the leader of `epoch` sets the in-sync replicas to `members`."""

    queue: QueueId
    epoch: int
    members: tuple[str, ...]
    txn: Txn


@dataclass(frozen=True, slots=True)
class PreVote:
    """Learn the log ends of the queue's live `replicas` and hand them to `Leadership.prevote_done`: this
    node campaigns if they let it."""

    queue: QueueId
    replicas: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Elected:
    queue: QueueId
    epoch: int


@dataclass(frozen=True, slots=True)
class Deposed:
    """This node no longer leads the queue (lease lapsed, or another node's key): stop acting as leader."""

    queue: QueueId
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class RevokeStale:
    """Revoke `lease`: a lease of this node's former process (killed and restarted within `lease_ttl`)
    that still holds leader keys. Nobody else can use it, and waiting for it to expire keeps the queues
    without a leader for up to `lease_ttl`."""

    lease: int


Effect = Campaign | ChangeInSync | PreVote | Elected | Deposed | RevokeStale

# A lost pre-vote is asked again after this long (the replica ahead of this one campaigns meanwhile).
PREVOTE_RETRY = 0.25

Position = tuple[int, int]  # a replica's (last epoch, end offset): later epochs first, then longer logs


def prevote_won(me: str, replicas: tuple[str, ...], positions: dict[str, Position]) -> bool:
    """Whether `me` may campaign: a majority of `replicas` answered, and no answer is ahead of its own
    (an equal one only from a replica after it in placement order)."""
    answered = [node for node in replicas if node in positions]
    if me not in positions or len(answered) < len(replicas) // 2 + 1:
        return False
    mine, rank = positions[me], replicas.index(me)
    return all(positions[node] < mine or (positions[node] == mine and rank <= replicas.index(node))
               for node in answered)


def leader_value(node: str) -> bytes:
    return json.dumps({"node": node}).encode()


def leader_node(kv: KeyValue) -> str:
    return _leader_in(kv.value)


# Parsed once per distinct value: routing asks who leads a queue for every message, and the values are
# few (one per node, one per in-sync set).
@functools.lru_cache(maxsize=1024)
def _leader_in(value: bytes) -> str:
    try:
        return str(json.loads(value)["node"])
    except (ValueError, KeyError, TypeError):
        return ""


def isr_value(members: Iterable[str]) -> bytes:
    return json.dumps({"members": list(members)}).encode()


def isr_members(kv: KeyValue) -> tuple[str, ...]:
    return _members_in(kv.value)


@functools.lru_cache(maxsize=1024)
def _members_in(value: bytes) -> tuple[str, ...]:
    try:
        return tuple(str(m) for m in json.loads(value)["members"])
    except (ValueError, KeyError, TypeError):
        return ()


def isr_change_txn(layout: KeyLayout, queue: QueueId, epoch: int, members: Iterable[str]) -> Txn:
    """The leader of `epoch` sets the ISR; fails (changing nothing) once that leader key is gone."""
    leader = layout.leader(*queue)
    return Txn(
        (Compare(leader, "CREATE", "EQUAL", epoch),),
        (Put(layout.isr(*queue), isr_value(members)),),
        (Get(leader),),
    )


def is_replicated(record: QueueRecord) -> bool:
    return record.durable and not record.exclusive  # server-named ones too, as RabbitMQ's are cluster-wide


class Leadership:
    def __init__(self, layout: KeyLayout, node_name: str, alive: Callable[[], Iterable[str]]) -> None:
        self.layout = layout
        self.name = node_name
        self.alive = alive  # the live nodes now (Membership.alive_nodes)
        self.replicas: dict[QueueId, tuple[str, ...]] = {}  # every replicated queue
        self.leaders: dict[QueueId, KeyValue] = {}
        self.in_sync: dict[QueueId, KeyValue] = {}
        self._seen: dict[bytes, int] = {}  # key -> last mod revision applied (deletions too)
        self.lease = 0
        self.lease_deadline = -math.inf
        self._lease_lock = threading.Lock()
        # A decision was made while the lease's deadline had passed (leadership given up, campaigns not
        # run): every queue is looked at again once it is renewed, which no watch event would say.
        self._lapsed = False
        self.led: dict[QueueId, int] = {}  # queues this node acts as leader of -> epoch
        self._busy: set[QueueId] = set()  # a txn of ours for the queue is running
        self._revoked: set[int] = set()  # stale leases of this node already asked to be revoked
        self._dirty: set[QueueId] = set()
        self._all_dirty = False
        # A lease this node gave up: it stepped down from a queue while the lease's deadline had passed,
        # and the lease then turned out to live on. It is revoked rather than led on under the same
        # epoch (every node would see the same leader key, so other nodes' consumers stayed on the old
        # queue object and its messages were never delivered), so the queues move as after an expiry.
        self._abandoned = 0
        self._stepped_down = 0  # the lease under which it last stepped down for a lapse
        self.queues_known = False  # the queue records have been read once
        # What replication reports of the followers of queues this node leads (broker/server/replication.py).
        self._lagging: dict[QueueId, set[str]] = {}
        self._caught_up: dict[QueueId, set[str]] = {}
        self._cleared: set[QueueId] = set()  # pre-vote won: campaign at the next decision
        self._prevote_after: dict[QueueId, float] = {}  # pre-vote lost: not asked again before then
        self.wake: Callable[[], None] = lambda: None  # the server's decide loop sets this

    # ---- inputs --------------------------------------------------------------------------------

    def lease_granted(self, lease: int, deadline: float) -> None:
        with self._lease_lock:
            self.lease, self.lease_deadline = lease, deadline
        self._all_dirty = True

    def lease_renewed(self, lease: int, deadline: float) -> None:
        """Thread-safe: the keepalives go out from a thread (broker/server/lease_thread.py). A renewal of
        a lease the node has replaced extends nothing."""
        with self._lease_lock:
            if lease == self.lease:
                self.lease_deadline = max(self.lease_deadline, deadline)

    def membership_changed(self) -> None:
        self._all_dirty = True

    def reset_queues(self, kvs: Iterable[KeyValue]) -> None:
        """The whole `meta/` range: only queue records matter here."""
        self.replicas = {}
        for kv in kvs:
            self._put_queue(kv)
        self._all_dirty = True
        self.queues_known = True

    def apply_queues(self, events: Iterable[WatchEvent]) -> None:
        for event in events:
            parsed = self.layout.parse_meta(event.kv.key)
            if parsed is None or parsed[1] != "queue":
                continue
            queue = (parsed[0], parsed[2])
            if event.kind == "DELETE":
                self.replicas.pop(queue, None)
            else:
                self._put_queue(event.kv)
            self._dirty.add(queue)

    def _put_queue(self, kv: KeyValue) -> None:
        parsed = self.layout.parse_meta(kv.key)
        if parsed is None or parsed[1] != "queue":
            return
        try:
            record = QueueRecord.decode(kv.value)
        except (ValueError, TypeError, KeyError):
            return
        if is_replicated(record):
            self.replicas[(parsed[0], parsed[2])] = record.replicas

    def reset_keys(self, prefix: bytes, kvs: Iterable[KeyValue]) -> None:
        """The whole `leader/` or `isr/` range (`prefix` says which)."""
        table = self.leaders if prefix == self.layout.leaders else self.in_sync
        table.clear()
        for kv in kvs:
            queue = self.layout.queue_of(kv.key)
            if queue is not None:
                table[queue] = kv
                self._seen[kv.key] = kv.mod_revision
        self._all_dirty = True

    def apply_keys(self, events: Iterable[WatchEvent]) -> None:
        for event in events:
            self._apply_key(event.kind, event.kv)

    def _apply_key(self, kind: str, kv: KeyValue) -> None:
        queue = self.layout.queue_of(kv.key)
        if queue is None or kv.mod_revision < self._seen.get(kv.key, 0):
            return  # older than what a txn's answer already applied
        self._seen[kv.key] = kv.mod_revision
        table = self._table(kv.key)
        if kind == "DELETE":
            table.pop(queue, None)
        else:
            table[queue] = kv
        self._dirty.add(queue)

    def _table(self, key: bytes) -> dict[QueueId, KeyValue]:
        return self.leaders if key.startswith(self.layout.leaders) else self.in_sync

    def prevote_done(self, effect: PreVote, positions: dict[str, Position], now: float) -> bool:
        """The log ends the pre-vote learnt (this node's included); True if this node may campaign."""
        queue = effect.queue
        self._busy.discard(queue)
        self._dirty.add(queue)
        won = prevote_won(self.name, self.replicas.get(queue, ()), positions)
        if won:
            self._cleared.add(queue)
        else:
            self._prevote_after[queue] = now + PREVOTE_RETRY
        return won

    def txn_done(self, effect: Campaign | ChangeInSync, result: TxnResult | None) -> None:
        """A txn of ours ran (result) or failed (None: the watch will tell what happened)."""
        self._busy.discard(effect.queue)
        self._dirty.add(effect.queue)
        if result is None:
            return
        if isinstance(effect, Campaign) and result.succeeded:
            key = self.layout.leader(*effect.queue)
            self._apply_key("PUT", KeyValue(key, leader_value(self.name), result.revision, result.revision,
                                            1, self.lease))
            if effect.queue not in self.in_sync:
                replicas = self.replicas.get(effect.queue, ())
                isr = self.layout.isr(*effect.queue)
                self._apply_key("PUT", KeyValue(isr, isr_value(replicas), result.revision, result.revision))
        elif isinstance(effect, ChangeInSync) and result.succeeded:
            isr = self.layout.isr(*effect.queue)
            previous = self.in_sync.get(effect.queue)
            created = previous.create_revision if previous else result.revision
            self._apply_key("PUT", KeyValue(isr, isr_value(effect.members), created, result.revision))

    def follower_lagging(self, queue: QueueId, node: str) -> None:
        """Replication could not keep `node` up to date: as leader, take it out of the in-sync set."""
        self._caught_up.get(queue, set()).discard(node)
        if node not in self._lagging.setdefault(queue, set()):
            self._lagging[queue].add(node)
            self._dirty.add(queue)
            self.wake()

    def follower_caught_up(self, queue: QueueId, node: str) -> None:
        """`node` holds this leader's whole log: as leader, put it back in the in-sync set."""
        self._lagging.get(queue, set()).discard(node)
        if node not in self._caught_up.setdefault(queue, set()):
            self._caught_up[queue].add(node)
            self._dirty.add(queue)
            self.wake()

    # ---- what this node knows --------------------------------------------------------------------

    def leader(self, queue: QueueId, now: float) -> str | None:
        """Who leads the queue, as far as this node knows; never itself once its lease may have lapsed."""
        kv = self.leaders.get(queue)
        if kv is None:
            return None
        node = leader_node(kv)
        if node == self.name and not self._mine(kv, now):
            return None
        return node

    def epoch(self, queue: QueueId) -> int:
        kv = self.leaders.get(queue)
        return kv.create_revision if kv is not None else 0

    def is_leader(self, queue: QueueId, now: float) -> bool:
        kv = self.leaders.get(queue)
        return kv is not None and self._mine(kv, now)

    def members(self, queue: QueueId) -> tuple[str, ...]:
        return self.replicas.get(queue, ())

    def in_sync_members(self, queue: QueueId) -> tuple[str, ...]:
        kv = self.in_sync.get(queue)
        return isr_members(kv) if kv is not None else ()

    def _mine(self, kv: KeyValue, now: float) -> bool:
        return (
            leader_node(kv) == self.name and kv.lease == self.lease and self.lease != 0
            and self.lease != self._abandoned and now < self.lease_deadline
        )

    # ---- decisions ------------------------------------------------------------------------------

    def decide(self, now: float) -> list[Effect]:
        """What to do about every queue something happened to since the last call (every queue this node
        leads, too: its lease may have lapsed meanwhile)."""
        effects: list[Effect] = []
        if now >= self.lease_deadline:
            self._lapsed = True
        elif self._lapsed:
            self._lapsed = False
            self._all_dirty = True
            if self._stepped_down == self.lease != self._abandoned:  # not a new lease: the same one lived
                self._abandoned = self.lease
                effects.append(RevokeStale(self.lease))
            self._stepped_down = 0
        if self._all_dirty:
            queues = set(self.replicas) | set(self.leaders) | set(self.led)
            self._all_dirty = False
        else:
            queues = self._dirty | set(self.led)
        queues |= {queue for queue, after in self._prevote_after.items() if now >= after}
        self._dirty = set()
        alive = set(self.alive())
        for queue in sorted(queues):
            effects += self._decide(queue, now, alive)
        return effects

    def _decide(self, queue: QueueId, now: float, alive: set[str]) -> list[Effect]:
        kv = self.leaders.get(queue)
        effects: list[Effect] = []
        if queue in self.led and not (kv is not None and self._mine(kv, now)
                                      and kv.create_revision == self.led[queue]):
            epoch = self.led.pop(queue)
            if now >= self.lease_deadline:
                reason = "this node's lease may have lapsed"
                self._stepped_down = self.lease
            elif kv is None:
                reason = "its leader key is gone"
            else:
                reason = f"{leader_node(kv)} leads it (epoch {kv.create_revision})"
            effects.append(Deposed(queue, epoch, reason))
        replicas = self.replicas.get(queue)
        if replicas is None or queue in self._busy:
            if replicas is None:
                self._forget_prevote(queue)
            return effects
        if kv is not None:
            self._forget_prevote(queue)
            stale = kv.lease
            if (leader_node(kv) == self.name and stale not in (0, self.lease) and self.lease != 0
                    and stale not in self._revoked):
                self._revoked.add(stale)
                effects.append(RevokeStale(stale))
            if self._mine(kv, now):
                if queue not in self.led:
                    self.led[queue] = kv.create_revision
                    self._lagging.pop(queue, None)
                    self._caught_up.pop(queue, None)
                    effects.append(Elected(queue, kv.create_revision))
                effects += self._resize(queue, kv.create_revision, alive, replicas)
            return effects
        if self.lease in (0, self._abandoned) or now >= self.lease_deadline:  # not on a lease given up
            return effects
        isr = self.in_sync.get(queue)
        if isr is None:  # the first leader: nothing is written yet, the first live replica campaigns
            candidates = [node for node in replicas if node in alive]
            if candidates and candidates[0] == self.name:
                self._busy.add(queue)
                effects.append(Campaign(queue, self._campaign_txn(queue, replicas, isr)))
            return effects
        if self.name not in replicas or self.name not in alive:
            return effects
        if queue in self._cleared:
            self._cleared.discard(queue)
            self._busy.add(queue)
            effects.append(Campaign(queue, self._campaign_txn(queue, replicas, isr)))
        elif now >= self._prevote_after.get(queue, -math.inf):
            self._busy.add(queue)
            effects.append(PreVote(queue, tuple(node for node in replicas if node in alive)))
        return effects

    def _forget_prevote(self, queue: QueueId) -> None:
        self._cleared.discard(queue)
        self._prevote_after.pop(queue, None)

    def _resize(
        self, queue: QueueId, epoch: int, alive: set[str], replicas: tuple[str, ...]
    ) -> list[Effect]:
        """As leader: drop from the ISR the members that are dead or that replication reports lagging
        (they cannot be in sync), and add back those it reports caught up (they hold the whole log)."""
        isr = self.in_sync.get(queue)
        if isr is None:
            return []
        members = isr_members(isr)
        lagging = self._lagging.get(queue, set())
        caught_up = self._caught_up.get(queue, set())
        kept = {m for m in members if (m in alive and m not in lagging) or m == self.name}
        kept |= {m for m in caught_up if m in alive and m in replicas}
        keep = tuple(m for m in replicas if m in kept) + tuple(m for m in members if m in kept
                                                                and m not in replicas)
        if keep == members:
            return []
        self._busy.add(queue)
        return [ChangeInSync(queue, epoch, keep, isr_change_txn(self.layout, queue, epoch, keep))]

    def _campaign_txn(self, queue: QueueId, replicas: tuple[str, ...], isr: KeyValue | None) -> Txn:
        leader, isr_key = self.layout.leader(*queue), self.layout.isr(*queue)
        put_leader = Put(leader, leader_value(self.name), self.lease)
        if isr is None:  # the first leader: every replica is in sync with an empty queue
            compare = (Compare.absent(leader), Compare.absent(isr_key))
            success: tuple[Put, ...] = (put_leader, Put(isr_key, isr_value(replicas)))
        else:  # elected from the ISR as this node read it
            compare = (Compare.absent(leader), Compare.unchanged_since(isr_key, isr.mod_revision))
            success = (put_leader,)
        return Txn(compare, success, (Get(leader), Get(isr_key)))
