"""Per-queue leadership without sockets: three nodes' state machines over an in-memory etcd with leases.

The real thing (etcd, processes killed and paused): interop/test_cluster_leadership.py.
"""

from __future__ import annotations

from typing import Any

from leveret.broker.cluster.etcd_ops import KeyValue, Put, Txn, TxnResult, WatchEvent
from leveret.broker.cluster.leadership import (
    Campaign,
    ChangeInSync,
    Deposed,
    Elected,
    Leadership,
    Position,
    PreVote,
    RevokeStale,
    isr_change_txn,
    prevote_won,
)
from leveret.broker.cluster.records import QueueRecord
from tests.test_cluster_metadata import LAYOUT, MemoryEtcd

Q = ("/", "orders")
NAMES = ["a", "b", "c"]


class LeasedEtcd(MemoryEtcd):
    """MemoryEtcd whose puts keep their lease, and whose leases can expire."""

    def txn(self, txn: Txn) -> TxnResult:
        leases = {op.key: op.lease for op in txn.success if isinstance(op, Put)}
        result = super().txn(txn)
        if result.succeeded:
            for key, lease in leases.items():
                kv = self.data[key]
                self.data[key] = KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, 1, lease)
                self.log[-len(leases) :] = [
                    WatchEvent("PUT", self.data[e.kv.key]) for e in self.log[-len(leases) :]
                ]
        return result

    def expire(self, lease: int) -> None:
        self.revision += 1
        for key in [k for k, kv in self.data.items() if kv.lease == lease]:
            del self.data[key]
            self.log.append(WatchEvent("DELETE", KeyValue(key, b"", 0, self.revision)))


class World:
    def __init__(self) -> None:
        self.etcd = LeasedEtcd()
        self.alive = set(NAMES)
        self.nodes = {n: Leadership(LAYOUT, n, lambda: sorted(self.alive)) for n in NAMES}
        self.seen = dict.fromkeys(NAMES, 0)
        # Each replica's log end, as a pre-vote learns it from the live ones (all equal unless set).
        self.positions: dict[str, Position] = dict.fromkeys(NAMES, (1, 10))
        record = QueueRecord("orders", True, False, "", ("a", "b", "c"), "a")
        kv = KeyValue(LAYOUT.queue("/", "orders"), record.encode(), 1, 1)
        for i, node in enumerate(self.nodes.values()):
            node.reset_queues([kv])
            node.lease_granted(100 + i, deadline=10.0)

    def deliver(self, name: str) -> None:
        node = self.nodes[name]
        node.apply_keys(self.etcd.log[self.seen[name] :])
        self.seen[name] = len(self.etcd.log)

    def step(self, name: str, now: float = 1.0, run: bool = True) -> list[Any]:
        """Deliver the watch, decide, run the txns asked for (feeding their answers back)."""
        self.deliver(name)
        node = self.nodes[name]
        effects = node.decide(now)
        for effect in effects:
            if run and isinstance(effect, Campaign | ChangeInSync):
                node.txn_done(effect, self.etcd.txn(effect.txn))
            elif run and isinstance(effect, PreVote):
                answers = {n: self.positions[n] for n in effect.replicas if n in self.alive or n == name}
                node.prevote_done(effect, answers, now)
        return effects


def test_the_first_replica_campaigns_and_wins_with_every_replica_in_sync() -> None:
    world = World()
    assert [type(e) for e in world.step("b")] == [] and world.step("c") == []
    effects = world.step("a")
    assert [type(e) for e in effects] == [Campaign]
    assert [type(e) for e in world.step("a")] == [Elected]
    for name in NAMES:
        world.deliver(name)
        assert world.nodes[name].leader(Q, 1.0) == "a"
        assert world.nodes[name].in_sync_members(Q) == ("a", "b", "c")
    assert world.nodes["a"].is_leader(Q, 1.0) and not world.nodes["b"].is_leader(Q, 1.0)


def test_on_leader_loss_the_next_in_sync_replica_takes_over_with_a_higher_epoch() -> None:
    world = World()
    world.step("a")
    world.step("a")
    epoch = world.nodes["a"].epoch(Q)
    world.etcd.expire(100)  # a's lease
    world.alive.discard("a")
    for name in "bc":
        world.nodes[name].membership_changed()
    assert [type(e) for e in world.step("c")] == [PreVote]  # lost: b's log is as new, and b is first
    assert world.step("c") == []  # and not asked again at once
    assert [type(e) for e in world.step("b")] == [PreVote]  # won
    effects = world.step("b")
    assert [type(e) for e in effects] == [Campaign]
    effects = world.step("b")
    assert [type(e) for e in effects] == [Elected, ChangeInSync]  # and drops dead a from the ISR
    assert effects[0].epoch > epoch
    world.deliver("c")
    assert world.nodes["c"].leader(Q, 1.0) == "b"
    assert world.nodes["c"].in_sync_members(Q) == ("b", "c")
    # The deposed leader's ISR change, guarded by its old epoch, changes nothing.
    assert not world.etcd.txn(isr_change_txn(LAYOUT, Q, epoch, ["a", "b", "c"])).succeeded
    world.deliver("c")
    assert world.nodes["c"].in_sync_members(Q) == ("b", "c")


def test_a_replica_without_a_majority_of_answers_never_leads() -> None:
    world = World()
    world.step("a")
    world.step("a")
    world.alive.discard("c")
    world.nodes["a"].membership_changed()
    world.step("a")  # a drops c from the ISR
    world.deliver("c")
    assert world.nodes["c"].in_sync_members(Q) == ("a", "b")
    world.alive = {"c"}  # a and b die; c comes back alone
    world.etcd.expire(100)
    world.etcd.expire(101)
    world.nodes["c"].membership_changed()
    assert [type(e) for e in world.step("c")] == [PreVote]  # only its own answer: no majority
    assert world.step("c", now=5.0) == [PreVote(Q, ("c",))]  # asked again later, lost again
    assert world.step("c", now=5.0) == []
    assert world.nodes["c"].leader(Q, 1.0) is None


def test_the_replica_with_the_newest_log_leads_next_outside_the_isr_or_not() -> None:
    """Confirms need a majority, not the whole ISR: the first in-sync replica may miss what the leader
    confirmed with the other follower, so the one whose log is newest takes over."""
    world = World()
    world.step("a")
    world.step("a")
    world.nodes["a"].follower_lagging(Q, "c")
    world.step("a")  # c leaves the ISR (it was slow to answer), and later becomes the one ahead
    world.positions = {"a": (1, 30), "b": (1, 20), "c": (1, 30)}
    world.etcd.expire(100)
    world.alive.discard("a")
    for name in "bc":
        world.nodes[name].membership_changed()
    assert [type(e) for e in world.step("b")] == [PreVote]
    assert world.step("b") == []  # c is ahead: b does not campaign
    assert [type(e) for e in world.step("c")] == [PreVote]
    assert [type(e) for e in world.step("c")] == [Campaign]
    assert [type(e) for e in world.step("c")][:1] == [Elected]
    world.deliver("b")
    assert world.nodes["b"].leader(Q, 1.0) == "c"


def test_a_pre_vote_is_won_by_the_newest_log_among_a_majority() -> None:
    replicas = ("a", "b", "c")
    assert prevote_won("a", replicas, {"a": (3, 5), "b": (3, 5)})  # a tie goes to the first
    assert not prevote_won("b", replicas, {"a": (3, 5), "b": (3, 5)})
    assert prevote_won("b", replicas, {"b": (3, 5), "c": (3, 5)})  # a did not answer
    assert prevote_won("b", replicas, {"a": (2, 9), "b": (3, 5)})  # a later epoch beats a longer log
    assert not prevote_won("a", replicas, {"a": (2, 9), "b": (3, 5)})
    assert not prevote_won("a", replicas, {"a": (3, 5), "b": (3, 6)})
    assert not prevote_won("a", replicas, {"a": (9, 9)})  # no majority
    assert not prevote_won("a", replicas, {"b": (1, 1), "c": (1, 1)})  # its own end unknown
    assert prevote_won("a", ("a",), {"a": (0, 0)})


def test_two_campaigns_from_stale_views_elect_one_leader() -> None:
    world = World()
    world.alive.discard("a")  # b thinks a is dead; a does not
    world.nodes["a"].alive = lambda: NAMES
    a = world.step("a", run=False)
    b = world.step("b", run=False)
    assert isinstance(a[0], Campaign) and isinstance(b[0], Campaign)
    results = [world.etcd.txn(a[0].txn), world.etcd.txn(b[0].txn)]
    assert [r.succeeded for r in results] == [True, False]


def test_a_node_whose_lease_may_have_lapsed_stops_leading_before_hearing_anything() -> None:
    world = World()
    world.step("a")
    world.step("a")
    node = world.nodes["a"]
    assert node.is_leader(Q, 9.9)
    # Paused past its lease's deadline: nothing delivered yet, and already not the leader.
    assert not node.is_leader(Q, 10.5) and node.leader(Q, 10.5) is None
    effects = node.decide(10.5)
    assert [type(e) for e in effects] == [Deposed]
    assert "lease" in effects[0].reason
    # Its lease did expire meanwhile; with a new lease, its old key is not its own any more.
    node.lease_granted(200, deadline=20.0)
    assert not node.is_leader(Q, 11.0)
    # The old key still stands: nobody campaigns until it is gone; a's old lease is revoked (once).
    assert node.decide(11.0) == [RevokeStale(100)]
    node.membership_changed()
    assert node.decide(11.0) == []
    # Once the old key is gone a campaigns again (first replica): an epoch above the old one.
    world.etcd.expire(100)
    assert [type(e) for e in world.step("a", now=11.0)] == [PreVote]
    effects = world.step("a", now=11.0)
    assert [type(e) for e in effects] == [Campaign]


def test_a_renewed_lease_keeps_the_leader() -> None:
    world = World()
    world.step("a")
    world.step("a")
    node = world.nodes["a"]
    node.lease_renewed(node.lease, 30.0)
    assert node.is_leader(Q, 25.0)
    assert node.decide(25.0) == []


def test_a_renewal_of_a_replaced_lease_extends_nothing() -> None:
    world = World()
    world.step("a")
    world.step("a")
    node = world.nodes["a"]
    node.lease_granted(200, deadline=12.0)  # registered again; the old lease's thread ends late
    node.lease_renewed(100, 30.0)
    assert node.lease_deadline == 12.0
    node.lease_renewed(200, 13.0)
    assert node.lease_deadline == 13.0


def test_a_new_queue_seen_while_the_lease_was_late_gets_its_campaign_once_renewed() -> None:
    world = World()
    node = world.nodes["a"]
    assert node.decide(10.5) == []  # its lease may have lapsed: no campaign now
    node.lease_renewed(node.lease, 12.0)
    assert [type(e) for e in node.decide(10.7)] == [Campaign]


def test_a_restarted_node_revokes_its_former_lease_and_leads_again() -> None:
    world = World()
    world.step("a")
    world.step("a")
    epoch = world.nodes["a"].epoch(Q)
    # kill -9 and a restart within lease_ttl: a new process, a new lease, the old key still there.
    restarted = Leadership(LAYOUT, "a", lambda: NAMES)
    restarted.reset_queues([KeyValue(LAYOUT.queue("/", "orders"), QueueRecord(
        "orders", True, False, "", ("a", "b", "c"), "a").encode(), 1, 1)])
    restarted.reset_keys(LAYOUT.leaders, list(world.etcd.data[k] for k in world.etcd.data
                                               if k.startswith(LAYOUT.leaders)))
    restarted.lease_granted(300, deadline=10.0)
    assert restarted.decide(1.0) == [RevokeStale(100)]
    assert not restarted.is_leader(Q, 1.0)
    world.etcd.expire(100)  # what the revoke does
    world.nodes["a"] = restarted
    world.seen["a"] = 0
    assert [type(e) for e in world.step("a")] == [PreVote]
    effects = world.step("a")
    assert [type(e) for e in effects] == [Campaign]
    assert [type(e) for e in world.step("a")] == [Elected]
    assert restarted.epoch(Q) > epoch


def test_a_lagging_follower_leaves_the_isr_and_joins_again_once_caught_up() -> None:
    world = World()
    world.step("a")
    world.step("a")
    leader = world.nodes["a"]
    leader.follower_lagging(Q, "c")  # replication could not reach it
    effects = world.step("a")
    assert [type(e) for e in effects] == [ChangeInSync] and effects[0].members == ("a", "b")
    assert leader.in_sync_members(Q) == ("a", "b")
    assert world.step("a") == []  # nothing more while it lags
    leader.follower_caught_up(Q, "c")
    effects = world.step("a")
    assert [type(e) for e in effects] == [ChangeInSync] and effects[0].members == ("a", "b", "c")
    world.deliver("b")
    assert world.nodes["b"].in_sync_members(Q) == ("a", "b", "c")
    # A dead node is never put back, caught up or not.
    leader.follower_lagging(Q, "b")
    world.step("a")
    world.alive.discard("b")
    leader.follower_caught_up(Q, "b")
    leader.membership_changed()
    assert world.step("a") == [] and leader.in_sync_members(Q) == ("a", "c")
