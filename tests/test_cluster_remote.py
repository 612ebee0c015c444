"""Queues led by another node, without I/O: two nodes' hubs (broker/cluster/remote.py) passing their
batches to each other by hand, as the peer links would."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from leveret.broker.cluster import remote_codec as codec
from leveret.broker.cluster.confirms import ConfirmGate
from leveret.broker.cluster.proxy import ProxyQueue
from leveret.broker.cluster.remote import REMOTE_BASE, RESERVE_FOR, RemoteQueues, Ticket
from leveret.broker.cluster.replica import ReplicaLog
from leveret.broker.cluster.replica_file import ReplicaFile
from leveret.broker.cluster.replication import EPOCH_SEQS, LeaderQueue, ReplicatedJournal, first_seq
from leveret.broker.message import Message
from leveret.broker.queues.consumer import Consumer
from leveret.broker.queues.entry import Entry
from leveret.broker.queues.queue import Queue
from leveret.broker.queues.subscriber import CreditPool
from leveret.broker.vhost import VirtualHost

QUEUE = ("/", "q")
# Not the configuration's defaults (5 s and 10 s), so the tests show the hub uses what it is given.
PUBLISH_HOLD = 3.0
CANCEL_AFTER = 7.0


class Leaders:
    """Leadership as the hubs read it: who leads each queue, and what this node acts as leader of."""

    def __init__(self, name: str, table: dict[tuple[str, str], str]) -> None:
        self.name, self.table = name, table

    @property
    def led(self) -> dict[tuple[str, str], int]:
        return {queue: 1 for queue, node in self.table.items() if node == self.name}

    def leader(self, queue: tuple[str, str], now: float) -> str | None:
        return self.table.get(queue)

    def is_leader(self, queue: tuple[str, str], now: float) -> bool:
        return self.table.get(queue) == self.name


class Node:
    def __init__(self, name: str, table: dict[tuple[str, str], str]) -> None:
        self.vhost = VirtualHost("/")
        leaders: Any = Leaders(name, table)
        self.hub = RemoteQueues(name, {"/": self.vhost}, leaders, lambda: 0.0, publish_hold=PUBLISH_HOLD,
                                cancel_after=CANCEL_AFTER)
        self.hub.link_up = lambda node: True
        self.confirms = 0
        self.hub.confirms_changed = self._confirms

    def _confirms(self) -> None:
        self.confirms += 1


class Channel:
    """What a consumer needs of its channel: deliveries are kept, in order."""

    def __init__(self) -> None:
        self.session = self
        self.output = CreditPool(1 << 30)
        self.flow_active = True
        self.credit_pool = None
        self.closed = False
        self.delivered: list[tuple[Consumer, Entry]] = []
        self.cancelled: list[Consumer] = []

    def deliver(self, consumer: Consumer, entry: Entry) -> None:
        consumer.unacked += 0 if consumer.no_ack else 1
        self.delivered.append((consumer, entry))

    def consumer_cancelled_by_broker(self, consumer: Consumer) -> None:
        self.cancelled.append(consumer)


def two_nodes() -> tuple[Node, Node]:
    """`leader` leads queue q; `other` has a proxy of it."""
    table = {QUEUE: "leader"}
    leader, other = Node("leader", table), Node("other", table)
    leader.hub.peers, other.hub.peers = ["other"], ["leader"]
    for node in (leader, other):
        node.vhost.proxies = node.hub
        declare(node, "q")
    return leader, other


@pytest.fixture
def nodes() -> tuple[Node, Node]:
    return two_nodes()


def declare(node: Node, name: str) -> None:
    node.vhost.declare_queue(name, owner=None, durable=True, exclusive=False, auto_delete=False, arguments={})


def exchange(sender: Node, receiver: Node) -> bool:
    """Carry one batch from `sender` to `receiver` and its answer back; False when there was none."""
    batch = sender.hub.take(receiver.hub.name)
    if batch is None:
        return False
    handled = receiver.hub.handle(sender.hub.name, batch.payload)
    for index, position in handled.published:  # no store here: every position is safe at once
        assert position == 0
        receiver.hub.confirmed(handled, index, True)
    sender.hub.batch_answered(batch, codec.decode_results(receiver.hub.finish(handled)))
    return True


def settle_all(*nodes: Node) -> None:
    while any([exchange(a, b) for a in nodes for b in nodes if a is not b]):
        pass


def message(body: bytes, key: str = "q") -> Message:
    return Message("", key, b"\x00\x00", body)


def fill(queue: Queue, count: int) -> None:
    """`count` messages with bodies b"0", b"1", ... in that order."""
    for i in range(count):
        queue.enqueue(message(str(i).encode()))


def consume(queue: Queue | ProxyQueue, prefetch: int, tag: str = "c",
            channel: Channel | None = None) -> tuple[Consumer, Channel]:
    """A consumer that acks, on `channel` or one of its own."""
    channel = channel or Channel()
    consumer = Consumer(tag, queue, channel, no_ack=False, exclusive=False, prefetch=prefetch)
    queue.add_consumer(consumer)
    return consumer, channel


def held_elsewhere(leader: Node, node: Node, count: int,
                   prefetch: int) -> tuple[ProxyQueue, Consumer, Channel]:
    """`count` messages on `leader`'s queue q, the first `prefetch` delivered to a consumer on `node`."""
    fill(leader.vhost.queues["q"], count)
    proxy = node.vhost.queues["q"]
    assert isinstance(proxy, ProxyQueue)
    consumer, channel = consume(proxy, prefetch)
    settle_all(leader, node)
    return proxy, consumer, channel


def client_acks(queue: Queue | ProxyQueue, consumer: Consumer, tags: list[int]) -> None:
    """What a channel does on basic.ack: settle, then give the consumer its credit back."""
    queue.settle(tags)
    consumer.unacked -= len(tags)
    consumer.update_credit()


def bodies(channel: Channel) -> list[bytes]:
    return [entry.message.body for _, entry in channel.delivered]


def deliveries(channel: Channel) -> list[tuple[bytes, bool]]:
    return [(entry.message.body, entry.redelivered) for _, entry in channel.delivered]


def tags_of(channel: Channel) -> list[int]:
    return [entry.seq for _, entry in channel.delivered]


def test_the_leader_holds_the_real_queue_and_the_others_a_proxy(nodes: tuple[Node, Node]) -> None:
    leader, other = nodes
    assert type(leader.vhost.queues["q"]).__name__ == "Queue"
    assert isinstance(other.vhost.queues["q"], ProxyQueue)


def test_every_op_survives_the_wire() -> None:
    ops: list[codec.Op] = [
        codec.Publish("/", "q", message(b"body")),
        codec.Consume("v", "q\u00e9", 7, codec.NO_ACK, 10, {"x-priority": 3}, 4),
        codec.Claim("/", "q", (3, 1 << 40), ((codec.ACK, 5), (codec.REQUEUE, 6))),
        codec.Credit(7, 99),
        codec.Cancel(7),
        codec.Settle("/", "q", codec.REQUEUE, (1, 2, 1 << 40)),
        codec.Call("/", "q", codec.DELETE, codec.IF_EMPTY),
        codec.Call("/", "q", codec.CONSUMABLE, codec.CALL_EXCLUSIVE, 1 << 40),
        codec.Deliver(7, 5, True, message(b"x" * 70000)),
        codec.Cancelled(7),
    ]
    decoded = codec.decode_ops(b"".join(codec.encode_op(op) for op in ops))
    assert [type(op) for op in decoded] == [type(op) for op in ops]
    for got, sent in zip(decoded, ops, strict=True):
        if isinstance(sent, (codec.Publish, codec.Deliver)):
            assert isinstance(got, type(sent))
            assert got.message.body == sent.message.body
            assert got.message.routing_key == sent.message.routing_key
        else:
            assert got == sent
    result = codec.CallResult(message_count=3, consumer_count=1, unacked=2, seq=9, redelivered=True,
                              message=message(b"m"))
    back = codec.decode_call_result(codec.encode_call_result(result))
    assert (back.message_count, back.consumer_count, back.unacked, back.seq) == (3, 1, 2, 9)
    assert back.redelivered
    assert back.message is not None and back.message.body == b"m"
    with pytest.raises(codec.CodecError):
        codec.decode_ops(codec.encode_op(ops[0])[:-3])
    with pytest.raises(codec.CodecError):
        codec.decode_ops(b"\xff")


def test_a_publish_keeps_its_names_and_refuses_every_truncation() -> None:
    sent = Message("ex-\u00e9", "key-\u00fc", b"\x10\x00\x02", b"payload")  # delivery mode 2
    wire = codec.encode_publish("/v", "q1", sent)
    assert wire == codec.encode_op(codec.Publish("/v", "q1", sent))
    (got,) = codec.decode_ops(wire)
    assert isinstance(got, codec.Publish) and (got.vhost, got.queue) == ("/v", "q1")
    assert (got.message.exchange, got.message.routing_key) == (sent.exchange, sent.routing_key)
    assert got.message.names_raw == sent.names_raw  # what a delivery re-sends as the two short strings
    assert (got.message.properties_raw, got.message.body) == (sent.properties_raw, sent.body)
    for cut in range(1, len(wire)):
        with pytest.raises(codec.CodecError):
            codec.decode_ops(wire[:cut])


def test_a_ticket_keeps_the_local_positions_it_is_compared_with() -> None:
    """The channel's routing loop keeps the largest position; a ticket among them wins and remembers the
    largest local store position, whichever side of it that came."""
    ticket = Ticket()
    ticket.parts = 1
    position = 0
    for needed in (5, ticket, 9, ticket, 7):
        if needed > position:
            position = needed
    assert position is ticket and int(ticket) == REMOTE_BASE and ticket.local == 9
    assert not position <= 10**12  # the channel's durable test never passes it
    assert ticket.outcome(100) is None  # a leader still has to answer
    ticket.parts = 0
    assert ticket.outcome(8) is None and ticket.outcome(9) is True
    ticket.failed = True
    assert ticket.outcome(9) is False


def test_a_publish_through_a_proxy_is_confirmed_by_the_leader(nodes: tuple[Node, Node]) -> None:
    leader, other = nodes
    proxy = other.vhost.queues["q"]
    ticket = proxy.enqueue(message(b"one"))
    assert isinstance(ticket, Ticket) and ticket.outcome(0) is None
    settle_all(leader, other)
    assert ticket.outcome(0) is True
    assert leader.vhost.queues["q"].message_count == 1
    # The same message routed to two proxies is one confirm waiting for both.
    leader.hub.leadership.table[("/", "p")] = "leader"  # type: ignore[attr-defined]
    declare(leader, "p")
    declare(other, "p")
    both = message(b"two")
    first, second = other.vhost.queues["q"].enqueue(both), other.vhost.queues["p"].enqueue(both)
    assert first is second and first.parts == 2
    settle_all(leader, other)
    assert first.outcome(0) is True


def test_a_publish_to_a_node_that_does_not_lead_is_sent_again_then_nacked(nodes: tuple[Node, Node]) -> None:
    leader, other = nodes
    now = [0.0]
    other.hub.clock = lambda: now[0]
    ticket = other.vhost.queues["q"].enqueue(message(b"one"))
    later = other.vhost.queues["q"].enqueue(message(b"two"))
    del leader.hub.leadership.table[QUEUE]  # type: ignore[attr-defined]  # deposed meanwhile, no leader
    settle_all(leader, other)
    assert ticket.outcome(0) is None and later.outcome(0) is None  # held, in order, for the next leader
    assert [m.body for m, _, _ in other.vhost.queues["q"].waiting] == [b"one", b"two"]
    now[0] = PUBLISH_HOLD - 0.1
    other.hub.reconcile()
    assert ticket.outcome(0) is None and later.outcome(0) is None
    now[0] = PUBLISH_HOLD + 0.1  # no leader within the publish hold
    other.hub.reconcile()
    assert ticket.outcome(0) is False and later.outcome(0) is False


def test_a_remote_consumer_gets_its_prefetch_and_more_as_it_acks(nodes: tuple[Node, Node]) -> None:
    leader, other = nodes
    real = leader.vhost.queues["q"]
    proxy, consumer, channel = held_elsewhere(leader, other, 10, 3)
    assert bodies(channel) == [b"0", b"1", b"2"]
    assert real.unacked == 3 and real.message_count == 7
    # Two acks: two more, never more than the prefetch in flight.
    first, second = channel.delivered[0][1], channel.delivered[1][1]
    client_acks(proxy, consumer, [first.seq, second.seq])
    settle_all(leader, other)
    assert bodies(channel) == [b"0", b"1", b"2", b"3", b"4"]
    assert real.unacked == 3 and real.message_count == 5


def test_a_broken_link_keeps_what_the_other_node_held_for_its_claim(nodes: tuple[Node, Node]) -> None:
    leader, other = nodes
    real = leader.vhost.queues["q"]
    proxy, consumer, channel = held_elsewhere(leader, other, 4, 2)
    held = [entry for _, entry in channel.delivered]
    assert real.unacked == 2
    leader.hub.link_down("other")
    other.hub.link_down("leader")
    # Set aside for the other node (not given to anyone else), and its ack meanwhile is kept, not sent.
    assert real.unacked == 2 and real.message_count == 2
    client_acks(proxy, consumer, [held[0].seq])
    assert other.hub.take("leader") is None
    # The link is back: the node claims what it holds with the ack; the consumer registers again with
    # one message held, so it gets one more, and the first message is gone for good.
    other.hub.reconcile()
    settle_all(leader, other)
    assert bodies(channel) == [b"0", b"1", b"2"]
    assert not any(entry.redelivered for _, entry in channel.delivered)
    assert real.unacked == 2 and real.message_count == 1 and proxy.unsettled == {}
    # The client's old tag still works.
    proxy.settle([held[1].seq])
    settle_all(leader, other)
    assert real.unacked == 1 and 1 not in real.checked_out


def _held_elsewhere_then_cut(leader: Node, other: Node, count: int) -> Channel:
    """`count` messages on the leader, the first two held by a consumer on the other node, then the link
    between them cut; returns the channel of a consumer on the leader, added after the cut."""
    real = leader.vhost.queues["q"]
    fill(real, count)
    proxy = other.vhost.queues["q"]
    proxy.add_consumer(Consumer("c", proxy, Channel(), no_ack=False, exclusive=False, prefetch=2))
    settle_all(leader, other)
    leader.hub.link_down("other")
    _, local = consume(real, 0, "l")
    return local


def test_what_a_node_held_comes_back_redelivered_once_that_node_is_dead(nodes: tuple[Node, Node]) -> None:
    leader, other = nodes
    now = [0.0]
    leader.hub.clock = lambda: now[0]
    alive = {"other"}
    leader.hub.node_alive = lambda node: node in alive
    leader.hub.link_up = lambda node: False
    local = _held_elsewhere_then_cut(leader, other, 3)
    assert bodies(local) == [b"2"]  # not the two set aside
    now[0] = RESERVE_FOR + 0.1
    leader.hub.reconcile()
    assert len(local.delivered) == 1  # the node lives: its link may come back, and its claim with it
    alive.clear()  # its lease expired: nobody will claim them
    leader.hub.reconcile()
    assert deliveries(local)[1:] == [(b"0", True), (b"1", True)]


def test_what_a_live_node_held_comes_back_if_it_does_not_claim_it_in_time(nodes: tuple[Node, Node]) -> None:
    """A node that stays alive but cut off from the leader: its consumers are cancelled after
    `cancel_after`, and the leader waits no longer than that for its claim either."""
    leader, other = nodes
    now = [0.0]
    leader.hub.clock = lambda: now[0]
    local = _held_elsewhere_then_cut(leader, other, 2)
    now[0] = CANCEL_AFTER - 0.1
    leader.hub.reconcile()
    assert local.delivered == []
    now[0] = CANCEL_AFTER + 0.1
    leader.hub.reconcile()
    assert deliveries(local) == [(b"0", True), (b"1", True)]


def three_nodes() -> tuple[Node, Node, Node]:
    table = {QUEUE: "a"}
    a, b, c = Node("a", table), Node("b", table), Node("c", table)
    for node in (a, b, c):
        node.vhost.proxies = node.hub
        node.hub.peers = [other.hub.name for other in (a, b, c) if other is not node]
        declare(node, "q")
    return a, b, c


def elect_b(a: Node, b: Node, c: Node) -> Queue:
    """`a` dies: `b` is elected and builds the queue from its replica of `a`'s (the same seqs), with
    what `a`'s log said was delivered."""
    old = a.vhost.queues["q"]
    c.hub.link_down("a")
    b.hub.link_down("a")
    a.hub.leadership.table[QUEUE] = "b"  # type: ignore[attr-defined]
    built = Queue("q", "/", durable=True, host=b.vhost)
    entries = [Entry(entry.message, entry.seq, True) for entry in (*old.checked_out.values(), *old.ready)]
    built.restore(sorted(entries, key=lambda entry: entry.seq), 100)
    b.hub.lead(b.vhost, built, sorted(old.checked_out))
    return built


def test_a_consumer_keeps_its_tags_when_the_leader_dies() -> None:
    a, b, c = three_nodes()
    old = a.vhost.queues["q"]
    proxy, consumer, channel = held_elsewhere(a, c, 5, 3)
    tags = tags_of(channel)
    # An ack is on its way as `a` dies: `a` applied it but never answered (nor replicated it).
    proxy.settle([tags[0]])
    consumer.unacked -= 1
    handled = a.hub.handle("c", c.hub.take("a").payload)  # type: ignore[union-attr]
    assert handled.results == [codec.CONFIRMED] and 1 not in old.checked_out
    built = elect_b(a, b, c)
    # A consumer on `b` itself gets nothing `c` may hold: that is set aside for `c`'s claim.
    _, rival = consume(built, 0, "r")
    assert bodies(rival) == [b"3", b"4"]
    c.hub.reconcile()
    settle_all(b, c)
    # The ack is applied at `b`; the other two stay `c`'s, under the client's tags; no redelivery.
    assert sorted(built.checked_out) == [2, 3, 4, 5] and 1 not in built.checked_out
    assert bodies(channel) == [b"0", b"1", b"2"]
    assert proxy.unsettled == {}
    proxy.settle(tags[1:])
    settle_all(b, c)
    assert sorted(built.checked_out) == [4, 5] and built.message_count == 0
    # The reservation's end requeues nothing: everything set aside was claimed.
    b.hub.clock = lambda: RESERVE_FOR + 1.0
    b.hub.reconcile()
    assert len(rival.delivered) == 2


def test_a_link_cut_longer_than_the_reservation_loses_no_ack_of_the_node_it_cut() -> None:
    """The leader's link to `c` alone is cut (both stay alive, no leader change) for longer than
    RESERVE_FOR; `c`'s client acks what it holds meanwhile. When the links are back, `b`'s consumer
    registers before `c`'s claim arrives: it must not be given what `c` held, and `c`'s ack applies."""
    a, b, c = three_nodes()
    now = [0.0]
    a.hub.clock = lambda: now[0]
    queue = a.vhost.queues["q"]
    proxy, consumer, channel = held_elsewhere(a, c, 4, 2)
    tags = tags_of(channel)
    assert sorted(queue.checked_out) == [1, 2]
    a.hub.link_down("c")
    c.hub.link_down("a")
    client_acks(proxy, consumer, tags[:1])  # acked while the link is down: kept for the claim
    now[0] = RESERVE_FOR + 1.0
    a.hub.reconcile()
    b_proxy = b.vhost.queues["q"]
    _, rival = consume(b_proxy, 0, "r")
    b.hub.reconcile()
    settle_all(a, b)  # `b` comes first
    assert deliveries(rival) == [(b"2", False), (b"3", False)]
    c.hub.reconcile()
    settle_all(a, b, c)
    assert 1 not in queue.checked_out and proxy.unsettled == {}  # the ack, claimed, is applied
    assert bodies(channel) == [b"0", b"1"]  # no redelivery
    proxy.settle(tags[1:])  # the client's other tag still works
    settle_all(a, b, c)
    assert sorted(queue.checked_out) == [3, 4] and queue.message_count == 0
    assert len(rival.delivered) == 2


def test_a_new_leader_keeps_what_a_live_node_cut_off_from_it_held_until_its_link_is_back() -> None:
    """`a` dies while the link between `b` and `c` is down (both alive): `b`, elected, sets aside what
    its log says was delivered for `c` too, past RESERVE_FOR, and `c`'s claim over the healed link takes
    it, with the ack its client sent meanwhile."""
    a, b, c = three_nodes()
    now = [0.0]
    b.hub.clock = lambda: now[0]
    b.hub.node_alive = lambda node: node != "a"
    b.hub.link_up = lambda node: False
    proxy, consumer, channel = held_elsewhere(a, c, 3, 2)
    tags = tags_of(channel)
    c.hub.link_down("b")
    b.hub.link_down("c")
    built = elect_b(a, b, c)
    _, rival = consume(built, 0, "r")
    assert bodies(rival) == [b"2"]
    client_acks(proxy, consumer, tags[:1])  # acked while `c` cannot reach the new leader
    now[0] = RESERVE_FOR + 1.0
    b.hub.reconcile()
    assert len(rival.delivered) == 1  # still `c`'s: it lives, its link may come back
    b.hub.link_up = lambda node: node != "a"
    c.hub.reconcile()
    settle_all(b, c)
    assert sorted(built.checked_out) == [2, 3] and proxy.unsettled == {}  # the ack applied, 2 still c's
    assert bodies(channel) == [b"0", b"1"]
    assert len(rival.delivered) == 1


def test_a_node_between_a_lost_lease_and_its_new_one_is_still_waited_for() -> None:
    """`c` lost its lease to a starved moment and registers again: not in membership, but its link is
    up, so it runs and claims. The new leader does not take it for dead."""
    a, b, c = three_nodes()
    b.hub.node_alive = lambda node: node == "b"
    b.hub.link_up = lambda node: node != "a"
    proxy, _, channel = held_elsewhere(a, c, 2, 1)
    built = elect_b(a, b, c)
    _, rival = consume(built, 0, "r")
    b.hub.reconcile()
    assert bodies(rival) == [b"1"]  # the held one stays set aside
    c.hub.reconcile()
    settle_all(b, c)
    assert sorted(built.checked_out) == [1, 2] and len(rival.delivered) == 1  # `c`'s claim took it


def test_what_no_live_node_claims_comes_back_once_they_all_claimed() -> None:
    """Messages a consumer on the dead leader's own node held: `c` holds nothing and says so (an empty
    claim), so the new leader does not wait out the reservation to give them to another consumer."""
    a, b, c = three_nodes()
    old = a.vhost.queues["q"]
    fill(old, 3)
    old.add_consumer(Consumer("l", old, Channel(), no_ack=False, exclusive=False, prefetch=2))
    b.hub.link_up = lambda node: node != "a"
    b.hub.node_alive = lambda node: node != "a"  # dead: its consumer's messages are nobody's
    built = elect_b(a, b, c)
    _, rival = consume(built, 0, "r")
    assert bodies(rival) == [b"2"]
    c.hub.reconcile()
    settle_all(b, c)
    assert deliveries(rival) == [(b"2", True), (b"0", True), (b"1", True)]


def test_a_held_message_the_new_leader_gave_away_is_not_claimed() -> None:
    """Not in the new leader's log as delivered, and taken by another consumer first: the fallback, the
    client's ack is dropped and the message stays with the one who has it."""
    a, b, c = three_nodes()
    old = a.vhost.queues["q"]
    old.enqueue(message(b"0"))
    proxy = c.vhost.queues["q"]
    _, channel = consume(proxy, 1)
    settle_all(a, c)
    c.hub.link_down("a")
    a.hub.leadership.table[QUEUE] = "b"  # type: ignore[attr-defined]
    built = Queue("q", "/", durable=True, host=b.vhost)
    built.restore([Entry(message(b"0"), 1, True)], 100)
    b.hub.lead(b.vhost, built)  # the delivered record never reached `b`
    _, rival = consume(built, 0, "r")
    assert bodies(rival) == [b"0"]
    c.hub.reconcile()
    settle_all(b, c)
    proxy.settle([channel.delivered[0][1].seq])
    settle_all(b, c)
    assert sorted(built.checked_out) == [1]  # still the rival's
    assert proxy.unsettled == {1: codec.ACK} and proxy.claim_due  # not applied: claimed again
    c.hub.reconcile()
    settle_all(b, c)
    assert proxy.unsettled == {} and sorted(built.checked_out) == [1]  # found gone: forgotten


def test_a_message_the_old_leader_never_replicated_is_not_confused_with_a_new_one() -> None:
    """`a` (epoch 5) delivered a message it never replicated; `b` (epoch 9) numbers new messages above
    anything `a` could have numbered, so `c`'s claim of that seq takes nothing, and the client's ack of it
    settles nothing: the new message is delivered, not lost."""
    assert first_seq(9, 100) == 9 * EPOCH_SEQS and first_seq(9, 9 * EPOCH_SEQS + 5) == 9 * EPOCH_SEQS + 5
    a, b, c = three_nodes()
    old = a.vhost.queues["q"]
    old.restore([], first_seq(5, 1))
    old.enqueue(message(b"never replicated"))
    proxy = c.vhost.queues["q"]
    consumer, channel = consume(proxy, 5)
    settle_all(a, c)
    c.hub.link_down("a")
    a.hub.leadership.table[QUEUE] = "b"  # type: ignore[attr-defined]
    built = Queue("q", "/", durable=True, host=b.vhost)
    built.restore([], first_seq(9, 5 * EPOCH_SEQS))  # its replica never had the message
    b.hub.lead(b.vhost, built)
    built.enqueue(message(b"new"))
    c.hub.reconcile()
    settle_all(b, c)
    client_acks(proxy, consumer, [channel.delivered[0][1].seq])
    settle_all(b, c)
    c.hub.reconcile()
    settle_all(b, c)
    assert bodies(channel) == [b"never replicated", b"new"]
    assert list(built.checked_out) == [9 * EPOCH_SEQS]


def test_a_consumer_on_the_new_leader_keeps_its_tags_too() -> None:
    a, b, c = three_nodes()
    proxy, consumer, channel = held_elsewhere(a, b, 3, 2)
    tags = tags_of(channel)
    built = elect_b(a, b, c)
    assert consumer.queue is built and sorted(built.checked_out) == [1, 2]
    client_acks(proxy, consumer, tags)  # the client acks with the tags it had from the proxy
    assert sorted(built.checked_out) == [3] and built.message_count == 0
    assert bodies(channel) == [b"0", b"1", b"2"]


def test_a_settlement_is_answered_once_the_log_holds_it(tmp_path: Path) -> None:
    leader, other = nodes_with_replicated_queue(tmp_path)
    real = leader.vhost.queues["q"]
    replicated = real.journal
    assert isinstance(replicated, ReplicatedJournal)
    real.enqueue(message(b"m"))
    log_leader = replicated.leader
    commit_all(log_leader, "leader")
    proxy = other.vhost.queues["q"]
    _, channel = consume(proxy, 1)
    settle_all(leader, other)
    proxy.settle([channel.delivered[0][1].seq])
    handled = leader.hub.handle("other", other.hub.take("leader").payload)  # type: ignore[union-attr]
    assert handled.results == [None] and len(handled.published) == 1  # waits for the log
    position = handled.published[0][1]
    assert log_leader.gate.safe() < position
    assert commit_all(log_leader, "leader")
    assert log_leader.gate.safe() >= position


def test_a_purge_is_answered_once_the_log_holds_it(tmp_path: Path) -> None:
    leader, other = nodes_with_replicated_queue(tmp_path)
    real = leader.vhost.queues["q"]
    fill(real, 3)
    log_leader = real.journal.leader  # type: ignore[attr-defined]
    commit_all(log_leader, "leader")
    answers: list[bytes | None] = []
    other.hub.call("leader", codec.Call("/", "q", codec.PURGE), answers.append)
    handled = leader.hub.handle("other", other.hub.take("leader").payload)  # type: ignore[union-attr]
    assert real.message_count == 0
    assert handled.results == [None] and len(handled.published) == 1  # purge-ok waits for the log
    index, position = handled.published[0]
    assert log_leader.gate.safe() < position
    assert commit_all(log_leader, "leader")
    leader.hub.confirmed(handled, index, True)
    (answer,) = codec.decode_results(leader.hub.finish(handled))
    assert codec.decode_call_result(answer).message_count == 3


def test_a_purge_its_leader_could_not_replicate_is_asked_again_elsewhere(tmp_path: Path) -> None:
    leader, other = nodes_with_replicated_queue(tmp_path)
    fill(leader.vhost.queues["q"], 2)
    answers: list[bytes | None] = []
    other.hub.call("leader", codec.Call("/", "q", codec.PURGE), answers.append)
    handled = leader.hub.handle("other", other.hub.take("leader").payload)  # type: ignore[union-attr]
    leader.hub.confirmed(handled, handled.published[0][0], False)  # deposed before it was replicated
    (answer,) = codec.decode_results(leader.hub.finish(handled))
    result = codec.decode_call_result(answer)
    assert result.error_code == codec.NOT_LEADER  # the asking node's call goes to the next leader


def nodes_with_replicated_queue(tmp_path: Path) -> tuple[Node, Node]:
    leader, other = two_nodes()
    replicate(leader.vhost.queues["q"], tmp_path)
    return leader, other


def replicate(queue: Queue, directory: Path) -> LeaderQueue:
    """`queue` journals to a replicated log of 3 (followers `b` and `c`); returns the log's leader."""
    leader = LeaderQueue(QUEUE, 3, ReplicaLog(), ReplicaFile(directory / "q.log", "/", "q"), ConfirmGate(),
                         ["b", "c"], lambda: 1000.0)
    queue.journal = ReplicatedJournal(leader)
    return leader


def commit_all(leader: LeaderQueue, node: str) -> bool:
    """All the log holds is durable on `node` (the leader) and acked by `b` and `c`: commit it."""
    leader.local_durable = leader.take_writes()
    for follower in ("b", "c"):
        leader.acked[follower] = leader.replica.end
    return leader.commit((node, "b", "c"), True, node)


def test_a_consumer_registered_again_gets_only_what_its_prefetch_leaves(nodes: tuple[Node, Node]) -> None:
    leader, other = nodes
    real = leader.vhost.queues["q"]
    proxy, _, channel = held_elsewhere(leader, other, 6, 3)
    assert len(channel.delivered) == 3
    leader.hub.link_down("other")
    other.hub.link_down("leader")
    other.hub.reconcile()
    settle_all(leader, other)
    assert len(channel.delivered) == 3 and real.unacked == 3  # held, claimed: no room for more


def test_calls_are_answered_by_the_leader(nodes: tuple[Node, Node]) -> None:
    leader, other = nodes
    real = leader.vhost.queues["q"]
    fill(real, 3)
    answers: list[bytes | None] = []
    calls = ((codec.COUNTS, 0), (codec.GET, 0), (codec.DELETE, codec.IF_EMPTY), (codec.PURGE, 0))
    for what, flags in calls:
        other.hub.call("leader", codec.Call("/", "q", what, flags), answers.append)
    settle_all(leader, other)
    counts, got, delete, purge = (codec.decode_call_result(a) for a in answers if a is not None)
    assert (counts.message_count, counts.consumer_count) == (3, 0)
    assert got.message is not None and got.message.body == b"0" and got.message_count == 2
    assert (delete.error_code, delete.error_text) == (406, "queue 'q' in vhost '/' not empty")
    assert purge.message_count == 2
    assert real.unacked == 1  # the get's message, held for the other node until it settles it


def consumable(node: Node, leader: Node, cid: int, *, exclusive: bool) -> codec.CallResult:
    """`node` asks `leader` whether the queue takes its consumer `cid`: the leader's answer."""
    answers: list[bytes | None] = []
    flags = codec.CALL_EXCLUSIVE if exclusive else 0
    node.hub.call(leader.hub.name, codec.Call("/", "q", codec.CONSUMABLE, flags, cid), answers.append)
    exchange(node, leader)
    (answer,) = answers
    assert answer is not None
    return dataclasses.replace(codec.decode_call_result(answer), node=leader.hub.name)


def test_a_yes_to_a_consumer_keeps_its_place_until_it_registers() -> None:
    """Two nodes racing for the exclusive consumer: the second's check comes between the first's check
    and its CONSUME, and is refused (before, both passed, and the leader cancelled the second's consumer
    after its consume-ok)."""
    a, b, c = three_nodes()
    real = a.vhost.queues["q"]
    first = consumable(b, a, b.hub.new_cid(), exclusive=True)
    assert first.error_code == 0
    second = consumable(c, a, c.hub.new_cid(), exclusive=True)
    assert (second.error_code, second.error_text) == (403, "queue 'q' in vhost '/' in exclusive use")
    assert consumable(c, a, c.hub.new_cid(), exclusive=False).error_code == 403  # nor any other
    assert real.exclusive_use(False)  # a consumer on the leader's own node is refused too

    # The winner registers under the id it asked with: its place becomes the consumer.
    b.vhost.queues["q"].add_consumer(Consumer("t", b.vhost.queues["q"], Channel(), no_ack=False,
                                              exclusive=True, prefetch=1), 1)
    settle_all(a, b, c)
    assert [consumer.exclusive for consumer in real.consumers] == [True]
    assert real.promised == {}


def test_a_promised_place_goes_when_its_consumer_never_comes() -> None:
    a, b, c = three_nodes()
    real = a.vhost.queues["q"]
    call = codec.Call("/", "q", codec.CONSUMABLE, codec.CALL_EXCLUSIVE, b.hub.new_cid())
    answer = consumable(b, a, call.cid, exclusive=True)
    assert real.exclusive_use(False)
    b.hub.call_done(call, answer)  # its connection closed before the consume was handled again
    settle_all(a, b, c)
    assert not real.exclusive_use(True)

    answer = consumable(b, a, b.hub.new_cid(), exclusive=True)
    a.hub.link_down("b")  # or the link to its node broke
    assert not real.exclusive_use(True)


def test_leadership_moving_swaps_proxy_and_real_queue_in_their_bindings(nodes: tuple[Node, Node]) -> None:
    leader, other = nodes
    for node in (leader, other):
        node.vhost.declare_exchange(
            "h", "x-consistent-hash", durable=True, auto_delete=False, internal=False, arguments={}
        )
        node.vhost.bind(node.vhost.exchanges["h"], node.vhost.queues["q"], "2", {})
        node.vhost.declare_exchange(
            "f", "fanout", durable=True, auto_delete=False, internal=False, arguments={}
        )
        node.vhost.bind(node.vhost.exchanges["f"], node.vhost.queues["q"], "", {})
    old = leader.vhost.queues["q"]
    consumer, channel = consume(old, 0)
    # Deposed (replication hands the queue back): a proxy takes its place, with its consumer.
    leader.hub.leadership.table[QUEUE] = "other"  # type: ignore[attr-defined]
    leader.hub.follow(leader.vhost, old)
    proxy = leader.vhost.queues["q"]
    assert isinstance(proxy, ProxyQueue) and consumer.queue is proxy and list(proxy.consumers) == [consumer]
    # Elected elsewhere: replication's queue takes the proxy's place there.
    built = Queue("q", "/", durable=True, host=other.vhost)
    built.enqueue(message(b"kept"))
    other.hub.lead(other.vhost, built)
    for node in (leader, other):
        queue = node.vhost.queues["q"]
        assert node.vhost.exchanges["h"].ring == (queue, queue)  # type: ignore[attr-defined]
        assert node.vhost.route(node.vhost.exchanges["f"], message(b"x", "")) == [queue]
    # The consumer, now on the proxy, attaches to the new leader and gets its message.
    leader.hub.reconcile()
    settle_all(leader, other)
    assert bodies(channel) == [b"kept"]
    # The reconcile makes a proxy of any instance this node does not lead.
    stray = Queue("q", "/", durable=True, host=leader.vhost)
    leader.vhost.queues["q"] = stray
    leader.hub.reconcile()
    assert isinstance(leader.vhost.queues["q"], ProxyQueue)


def test_a_consumer_without_a_leader_is_cancelled_in_the_end(nodes: tuple[Node, Node]) -> None:
    leader, other = nodes
    now = [0.0]
    other.hub.clock = lambda: now[0]
    other.hub.link_up = lambda node: False
    proxy = other.vhost.queues["q"]
    consumer, channel = consume(proxy, 1)
    other.hub.reconcile()
    assert channel.cancelled == []
    now[0] = CANCEL_AFTER - 0.1
    other.hub.reconcile()
    assert channel.cancelled == []
    now[0] = CANCEL_AFTER + 0.1
    other.hub.reconcile()
    assert channel.cancelled == [consumer] and proxy.consumers == type(proxy.consumers)()


def test_a_delivery_in_flight_to_a_cancelled_consumer_goes_back(nodes: tuple[Node, Node]) -> None:
    leader, other = nodes
    real = leader.vhost.queues["q"]
    real.enqueue(message(b"m"))
    proxy = other.vhost.queues["q"]
    consumer, channel = consume(proxy, 1)
    assert exchange(other, leader)  # registered: the leader delivers, the delivery waits in its outbox
    assert real.unacked == 1
    proxy.remove_consumer(consumer)  # basic.cancel meanwhile
    assert exchange(other, leader)
    settle_all(leader, other)  # the delivery arrives for a consumer no longer there: sent back
    assert channel.delivered == []
    assert real.unacked == 0 and [entry.redelivered for entry in real.ready] == [True]


class GlobalQosChannel(Channel):
    """A channel under basic.qos(global=true): its consumers share one pool of credit."""

    def __init__(self, prefetch: int) -> None:
        super().__init__()
        self.global_prefetch = prefetch
        self.credit_pool = CreditPool(prefetch)  # type: ignore[assignment]
        self.consumers: dict[str, Consumer] = {}


def test_a_channel_wide_prefetch_bounds_consumers_on_queues_led_elsewhere() -> None:
    table = {("/", "a"): "leader", ("/", "b"): "leader"}
    leader, other = Node("leader", table), Node("other", table)
    for node in (leader, other):
        node.vhost.proxies = node.hub
        declare(node, "a")
        declare(node, "b")
    for name in ("a", "b"):
        for i in range(10):
            leader.vhost.queues[name].enqueue(message(b"%s%d" % (name.encode(), i), name))
    channel = GlobalQosChannel(3)
    for name in ("a", "b"):
        proxy = other.vhost.queues[name]
        consumer = Consumer(name, proxy, channel, no_ack=False, exclusive=False, prefetch=0)
        channel.consumers[name] = consumer
        proxy.add_consumer(consumer)
    settle_all(leader, other)
    assert len(channel.delivered) == 3  # not 3 per queue: the leader was given what the pool had
    assert channel.credit_pool is not None and channel.credit_pool.left == 0
    # One ack (the channel gives its credit back to the pool and tells its queues): one more comes.
    consumer, entry = channel.delivered[0]
    consumer.queue.settle([entry.seq])
    channel.credit_pool.left += 1
    for name in ("a", "b"):
        other.vhost.queues[name].credit_changed()
    settle_all(leader, other)
    assert len(channel.delivered) == 4
    assert leader.vhost.queues["a"].unacked + leader.vhost.queues["b"].unacked == 3


AT_LEAST_ONCE = {"x-queue-type": "quorum", "x-dead-letter-exchange": "dlx",
                 "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def test_an_at_least_once_dead_letter_into_a_queue_led_elsewhere_settles_on_its_confirm() -> None:
    table = {("/", "source"): "other", ("/", "target"): "leader"}
    leader, other = Node("leader", table), Node("other", table)
    for node in (leader, other):
        node.vhost.proxies = node.hub
        node.vhost.declare_exchange("dlx", "fanout", durable=True, auto_delete=False, internal=False,
                                    arguments={})
        declare(node, "target")
        node.vhost.exchanges["dlx"].bind(node.vhost.queues["target"], "", {})
        node.vhost.declare_queue("source", owner=None, durable=True, exclusive=False, auto_delete=False,
                                 arguments=AT_LEAST_ONCE)
    source = other.vhost.queues["source"]
    source.enqueue(message(b"dead", "source"))
    entry = source.take()
    assert isinstance(entry, Entry)
    source.reject([entry.seq])
    assert source.lifecycle is not None and source.lifecycle.outbox is not None
    assert len(source.lifecycle.outbox) == 1  # held until the target's leader confirms its copy
    settle_all(leader, other)
    assert [e.message.body for e in leader.vhost.queues["target"].ready] == [b"dead"]
    other.vhost.executor.commit_completed(0, None)  # the node does this once the leader answered
    assert len(source.lifecycle.outbox) == 0
