"""A leader deposed while alive (its lease lapsed, or a newer epoch seen), without I/O: the hubs of
tests/test_cluster_remote.py, with channels that keep their unacked deliveries as the real one does
(delivery tag -> (seq, queue, consumer)), so the deposed node's hub can hand them to the proxy."""

from __future__ import annotations

import gc
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from pamqp.commands import Basic, Tx
from pamqp.commands import Queue as AmqpQueue

from leveret.broker.cluster import remote_codec as codec
from leveret.broker.cluster.proxy import ProxyQueue
from leveret.broker.cluster.replication import ReplicatedJournal
from leveret.broker.node import Node as BrokerNode
from leveret.broker.queues.consumer import Consumer
from leveret.broker.queues.entry import Entry
from leveret.broker.queues.lifecycle import Lifecycle
from leveret.broker.queues.queue import Queue
from leveret.broker.session.connection import ConnectionSession
from leveret.config import Config
from tests.peers import ClientPeer
from tests.test_cluster_remote import (
    QUEUE,
    Channel,
    Node,
    bodies,
    commit_all,
    consume,
    fill,
    message,
    replicate,
    settle_all,
    three_nodes,
)


class TaggedChannel(Channel):
    """A channel that numbers deliveries with tags and keeps the unacked ones by tag, as
    broker/session/channel.py does; `ack` settles a tag where the table says it came from."""

    def __init__(self) -> None:
        super().__init__()
        self.unacked: OrderedDict[int, tuple[int, Queue, Any]] = OrderedDict()
        self.next_tag = 1

    def deliver(self, consumer: Consumer, entry: Entry) -> None:
        super().deliver(consumer, entry)
        self.unacked[self.next_tag] = (entry.seq, consumer.queue, consumer)
        self.next_tag += 1

    def ack(self, *tags: int) -> None:
        for tag in tags:
            seq, queue, consumer = self.unacked.pop(tag)
            queue.settle([seq])
            consumer.unacked -= 1
            consumer.update_credit()


def on(node: Node, channel: TaggedChannel) -> None:
    node.hub.unacked_tables = lambda vhost: [channel.unacked]


def depose(node: Node, queue: Queue, leader: str) -> None:
    """`node` stops leading (replication's Deposed: the journal stopped, then `follow`)."""
    node.hub.leadership.table[QUEUE] = leader  # type: ignore[attr-defined]
    journal = queue.journal
    if isinstance(journal, ReplicatedJournal):
        journal.leader.depose()
    node.hub.follow(node.vhost, queue)


def replica_of(queue: Queue) -> list[Entry]:
    """What a follower's replica of `queue` holds (the same seqs): every message, redelivered."""
    entries = [Entry(entry.message, entry.seq, True) for entry in (*queue.checked_out.values(), *queue.ready)]
    return sorted(entries, key=lambda entry: entry.seq)


def elect(node: Node, replica: list[Entry], delivered: list[int]) -> Queue:
    """`node` is elected and builds the queue from its replica, with what its log says was delivered
    set aside for the claims."""
    built = Queue("q", "/", durable=True, host=node.vhost)
    built.restore(replica, 100)
    node.hub.lead(node.vhost, built, delivered)
    return built


def test_a_consumer_on_a_deposed_leader_keeps_its_tags_and_its_acks_apply_at_the_next() -> None:
    a, b, c = three_nodes()
    old = a.vhost.queues["q"]
    fill(old, 4)
    channel = TaggedChannel()
    on(a, channel)
    consumer, _ = consume(old, 3, channel=channel)
    assert bodies(channel) == [b"0", b"1", b"2"]
    replica = replica_of(old)
    depose(a, old, "b")
    proxy = a.vhost.queues["q"]
    assert isinstance(proxy, ProxyQueue) and consumer.queue is proxy
    assert all(queue is proxy for _, queue, _ in channel.unacked.values())  # nothing left on `old`
    built = elect(b, replica, [1, 2, 3])
    channel.ack(1)  # after the change, with the tag it had: kept for the claim
    assert proxy.unsettled == {1: codec.ACK}
    for node in (a, c):
        node.hub.reconcile()
    settle_all(a, b, c)
    # Claimed: the ack applied, the other two still the client's; its free credit takes the fourth.
    assert sorted(built.checked_out) == [2, 3, 4] and built.message_count == 0
    assert bodies(channel) == [b"0", b"1", b"2", b"3"] and proxy.unsettled == {}
    assert channel.cancelled == []
    channel.ack(2, 3, 4)
    settle_all(a, b, c)
    assert not built.checked_out and built.message_count == 0
    # Nothing holds the deposed leader's queue object any more.
    gone = weakref.ref(old)
    del old
    gc.collect()
    assert gone() is None


def test_acks_its_log_had_not_replicated_when_deposed_are_applied_at_the_next_leader(tmp_path: Path) -> None:
    """Acks the deposed leader's queue applied after the last point every in-sync replica held (as when
    its node, awake after a pause, handles a client's ack before it notices its lease is gone): the next
    leader's state lacks them, so they go in the claim."""
    a, b, c = three_nodes()
    old = a.vhost.queues["q"]
    leader = replicate(old, tmp_path)
    fill(old, 3)
    channel = TaggedChannel()
    on(a, channel)
    consume(old, 2, channel=channel)
    commit_all(leader, "a")
    assert leader.committed == leader.replica.end
    replicated = leader.replica.state.copy()  # what the next leader holds
    channel.ack(1)  # applied by `old`, logged, never replicated
    depose(a, old, "b")
    built = Queue("q", "/", durable=True, host=b.vhost)
    built.restore([Entry(message(str(seq - 1).encode()), seq, True) for seq in sorted(replicated.held)], 100)
    b.hub.lead(b.vhost, built, [seq for seq, held in replicated.held.items() if held.delivered])
    for node in (a, c):
        node.hub.reconcile()
    settle_all(a, b, c)
    assert sorted(built.checked_out) == [2, 3] and built.message_count == 0  # 1 acked; 2 held; 3 its
    assert bodies(channel) == [b"0", b"1", b"2"]


def test_what_a_node_claimed_in_place_at_its_election_is_claimed_again_when_it_is_deposed() -> None:
    """A consumer on `b`'s proxy while `a` led; `b` elected (the consumer's deliveries held there, in
    place); then `b` deposed in turn, `c` elected: the client's tags from the first proxy still settle."""
    a, b, c = three_nodes()
    old = a.vhost.queues["q"]
    fill(old, 3)
    channel = TaggedChannel()
    on(b, channel)
    first_proxy = b.vhost.queues["q"]
    consume(first_proxy, 2, channel=channel)
    settle_all(a, b)
    assert bodies(channel) == [b"0", b"1"]
    c.hub.link_down("a")
    b.hub.link_down("a")
    a.hub.leadership.table[QUEUE] = "b"  # type: ignore[attr-defined]
    led_by_b = elect(b, replica_of(old), [1, 2])
    assert sorted(led_by_b.checked_out) == [1, 2]
    replica = replica_of(led_by_b)
    depose(b, led_by_b, "c")
    second_proxy = b.vhost.queues["q"]
    assert all(queue is second_proxy for _, queue, _ in channel.unacked.values())
    led_by_c = elect(c, replica, [1, 2])
    channel.ack(1)
    b.hub.reconcile()
    settle_all(b, c)
    assert sorted(led_by_c.checked_out) == [2, 3] and led_by_c.message_count == 0
    assert bodies(channel) == [b"0", b"1", b"2"]
    channel.ack(2)
    settle_all(b, c)
    assert sorted(led_by_c.checked_out) == [3]


class Recorder:
    """A queue's new object as a channel's settlements see it."""

    def __init__(self) -> None:
        self.settled: list[int] = []
        self.acked = 0  # the channel counts its acks on the queue

    def settle(self, seqs: list[int]) -> list[Entry]:
        self.settled.extend(seqs)
        return []


def test_a_channel_hands_over_every_unacked_delivery_even_one_acked_in_an_open_transaction() -> None:
    """The node gives the hub every table a channel keeps its unacked deliveries in; a transaction's
    acks, taken from the table at basic.ack, are settled at tx.commit where the table says by then."""
    node = BrokerNode(Config())
    client = ClientPeer(ConnectionSession(node, "127.0.0.1:1", from_loopback=True))
    client.handshake()
    client.open_channel(1)
    client.method(1, AmqpQueue.Declare(queue="txq"))
    for body in (b"a", b"b"):
        client.publish(1, body, routing_key="txq")
    client.method(1, Tx.Select())
    tags = [frame.delivery_tag for _, frame in client.method(1, Basic.Get(queue="txq"))
            if isinstance(frame, Basic.GetOk)]
    tags += [frame.delivery_tag for _, frame in client.method(1, Basic.Get(queue="txq"))
             if isinstance(frame, Basic.GetOk)]
    client.method(1, Basic.Ack(delivery_tag=tags[0]))
    moved = Recorder()
    tables = node._unacked_tables("/")
    assert sorted(tag for table in tables for tag in table) == tags  # the open transaction's too
    for table in tables:
        for tag, (seq, _, consumer) in list(table.items()):
            table[tag] = (seq, moved, consumer)  # type: ignore[assignment]
    assert node._unacked_tables("other vhost") == []
    client.method(1, Tx.Commit())
    assert len(moved.settled) == 1 and moved.acked == 1
    assert node.vhosts["/"].queues["txq"].unacked == 2  # the old object saw no settlement


def test_a_deposed_leaders_queue_keeps_no_timer_and_is_freed() -> None:
    """Its messages' TTL would otherwise expire and dead-letter them from a stale state, and the timer
    keep the object (and its messages) alive."""
    a, b, c = three_nodes()
    old = Queue("q", "/", durable=True, arguments={"x-message-ttl": 60_000}, host=a.vhost)
    Lifecycle(old)
    a.vhost.queues["q"] = old
    old.enqueue(message(b"m"))
    assert a.vhost.deadlines.next_deadline() is not None
    depose(a, old, "b")
    assert a.vhost.deadlines.next_deadline() is None
    gone = weakref.ref(old)
    del old
    gc.collect()
    assert gone() is None
