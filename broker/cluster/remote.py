"""Queues led by another node, sans-IO: the node's hub between its proxies and the leaders' real queues.

Every replicated queue (durable, not exclusive, server-named or not) has one authoritative copy, at its
leader; every other node holds a proxy (broker/cluster/proxy.py) in the vhost's table. The hub plays both
parts of the exchange, over the peer links (broker/server/remote.py does the I/O; the ops are in
remote_codec.py):

- For a proxy here: publishes go to the leader in one batch per node (the server's sender takes what a
  reader's batch queued, as one request); a publisher confirm waits for the leader's answer, which it gives
  once its own confirm condition holds (`Ticket`). A consumer registers at the leader with a credit limit
  (how many deliveries in all it may have had: prefetch, counted as AMQP 1.0's link credit, so deliveries
  in flight never exceed it); deliveries come back; acks, nacks and rejects go there. basic.get, purge,
  passive-declare counts and delete are calls answered by the leader.
- For a queue led here: the leader's side of all that, each remote consumer a `RemoteConsumer` of the real
  queue, and what each node holds unacked remembered (`_Origin.held`).

A message is named between nodes by its seq in the queue's replicated log (the same on every replica), so
what a node's clients hold survives a leader change. The consumer's node keeps, per proxy, what its
clients hold unacked and the settlements the leader has not answered as replicated (a settlement's answer
waits, as a publish's confirm does, until the log holds it as a confirm's condition requires). When the
leader moves, or the link to it broke, the node sends the (new) leader a claim of both: the leader applies
the settlements (those the old leader had applied and replicated are gone already: nothing happens) and
keeps the held messages unacked for that node, so the clients keep their delivery tags and see no
redelivery. A new leader sets aside the messages its log says were delivered, and a leader whose link to a
node broke sets aside what that node held: a claim takes them back; what no claim takes in time is
requeued (redelivered). A node with a live link is waited for `RESERVE_FOR` seconds (its claim comes
within a reconcile round); one whose link is down, for as long as it stays alive in etcd's membership and
at most `cancel_after` seconds: a cut link, not a dead node, comes back, and the node's clients still hold
those messages and may have acked them meanwhile. A message already gone elsewhere cannot be
claimed: the client's ack of it is then dropped and the message comes back redelivered, as before claims.

Leadership moves: replication installs the leader's queue when this node is elected (`lead`, built from
its replica state) and hands it back when deposed (`follow`: a proxy takes its place); `reconcile`, run
after each round of leadership decisions, turns any other instance of a queue not led here into a proxy,
and attaches proxies' consumers to their current leader again or, when that has not been possible for
`cancel_after` seconds (`cluster.consumer_cancel_delay`), cancels them with basic.cancel (consumer cancel
notification).
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from leveret.amqp.constants import ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED
from leveret.amqp.errors import ChannelError
from leveret.broker.cluster import remote_codec as codec
from leveret.broker.cluster.proxy import ProxyQueue
from leveret.broker.cluster.replication import NotLeaderJournal, ReplicatedJournal
from leveret.broker.cluster.roles import QueueRoles
from leveret.broker.message import Message
from leveret.broker.queues.consumer import UNLIMITED
from leveret.broker.queues.queue import Queue
from leveret.broker.queues.subscriber import DELIVERY_OVERHEAD, CreditPool

if TYPE_CHECKING:
    from leveret.broker.cluster.leadership import Leadership
    from leveret.broker.queues.entry import Entry
    from leveret.broker.vhost import VirtualHost

log = logging.getLogger(__name__)

# Above every store position: a publish confirm that waits for a leader's answer (see Ticket).
REMOTE_BASE = 1 << 62
# How long a cancelled consumer's deliveries still in flight are recognised (and sent back).
FORGET_CANCELLED = 30.0
# How long a new leader keeps what may still be held by a consumer on another node whose link is up, for
# that node's claim (sent within a reconcile round), before it requeues it (redelivered).
RESERVE_FOR = 2.0
# After a leader refused a consumer (not the leader yet, or no longer), before asking again.
RETRY_ATTACH = 0.25
# Bytes of deliveries a leader sends one node before that node has answered them.
OUTPUT_WINDOW = 4 * 1024 * 1024

_HOW = {"ack": codec.ACK, "reject": codec.REJECT, "requeue": codec.REQUEUE}


class Ticket(int):
    """The confirm of one publish routed to proxies: the channel keeps it where a store position goes.

    Its value is above every store position, so the channel's `position <= durable` test never passes it.
    While the routing loop takes the largest position of the message's queues, the comparisons record the
    store positions of this node's own queues it is compared with (`local`): the confirm then waits for
    those too. Settled when every leader answered (or one refused: a nack)."""

    parts: int
    failed: bool
    local: int

    def __new__(cls) -> Ticket:
        ticket = int.__new__(cls, REMOTE_BASE)
        ticket.parts = 0
        ticket.failed = False
        ticket.local = 0
        return ticket

    def __gt__(self, other: object) -> bool:  # `ticket > position`: a queue after a local one
        if other is self:
            return False
        if isinstance(other, int) and other > self.local:
            self.local = int(other)
        return True

    def __lt__(self, other: object) -> bool:  # `position > ticket`, reflected: a local queue after
        if isinstance(other, int) and not isinstance(other, Ticket) and other > self.local:
            self.local = int(other)
        return False

    __hash__ = object.__hash__

    def outcome(self, durable: int) -> bool | None:
        """None while it waits; True to confirm (basic.ack), False to nack."""
        if self.failed:
            return False
        if self.parts or self.local > durable:
            return None
        return True


class _Outbox:
    """Ops for one node, in order, until the server's sender takes them as one request."""

    __slots__ = ("ops", "results", "delivered_bytes")

    def __init__(self) -> None:
        self.ops: list[bytes] = []
        self.results: list[Callable[[bytes | None], None]] = []
        self.delivered_bytes = 0


class Batch:
    __slots__ = ("node", "payload", "results", "delivered_bytes")

    def __init__(self, node: str, outbox: _Outbox) -> None:
        self.node = node
        self.payload = b"".join(outbox.ops)
        self.results = outbox.results
        self.delivered_bytes = outbox.delivered_bytes


class _Subscription:
    """A consumer here on a proxy: its registration at the leader, while it has one."""

    __slots__ = ("cid", "consumer", "proxy", "node", "generation", "received", "detached_at", "retry_at",
                 "pool", "sent", "told")

    def __init__(self, cid: int, consumer: Any, proxy: ProxyQueue, now: float) -> None:
        self.cid = cid
        self.consumer = consumer
        self.proxy = proxy
        self.node: str | None = None  # the leader it is registered at
        self.generation = 0
        self.received = 0  # deliveries had in all (the credit limit counts from it)
        self.detached_at = now
        self.retry_at = 0.0
        # Under a channel-wide prefetch (basic.qos global), the channel's pool. The leader cannot draw on
        # it as it delivers, so credit is drawn when it is given: `sent`, the last limit the leader had,
        # is never more than the pool allowed, and a delivery beyond it (sent before a lower limit came)
        # draws as it arrives. Every unacked delivery has drawn one, as a local queue's would.
        self.pool: CreditPool | None = None
        self.sent = 0
        self.told = -1  # the limit last sent to the leader

    def limit(self) -> int:
        """The credit limit for the leader: deliveries in all this consumer may have had."""
        consumer = self.consumer
        credit = max(consumer.credit, 0)
        pool = consumer.pool
        if pool is not self.pool:  # basic.qos(global) changed: what the old limit allowed is not drawn
            self.pool = pool
            self.sent = self.received
        if pool is None:
            self.sent = self.received + credit
            return self.sent
        channel = consumer.channel
        share = max(channel.global_prefetch // max(len(channel.consumers), 1), 1)  # no one takes it all
        take = min(min(credit, share) - self.outstanding, pool.left)
        if take > 0:
            pool.left -= take
            self.sent = max(self.sent, self.received) + take
        return max(self.sent, self.received)

    @property
    def outstanding(self) -> int:
        return max(self.sent - self.received, 0)

    def arrived(self) -> None:
        """A delivery came from the leader."""
        if self.pool is not None and self.received >= self.sent:
            self.pool.left -= 1  # not drawn when given
        self.received += 1

    def give_back(self) -> None:
        """No longer registered at a leader (what it still sends is requeued): what was drawn for
        deliveries that will not come goes back to the pool."""
        if self.pool is not None:
            self.pool.left += self.outstanding
        self.sent = self.received


class _Courier:
    """A remote consumer's "channel": what the queue hands it goes to the consumer's node."""

    __slots__ = ("hub",)

    def __init__(self, hub: RemoteQueues) -> None:
        self.hub = hub

    def deliver(self, consumer: RemoteConsumer, entry: Entry) -> None:
        self.hub._deliver_remote(consumer, entry)


class RemoteConsumer:
    """A consumer on another node, as the leader's queue sees it (a queues/subscriber.Subscriber)."""

    __slots__ = ("cid", "origin", "queue", "no_ack", "exclusive", "priority", "credit", "pool", "output",
                 "channel", "delivered", "arguments")

    def __init__(self, origin: _Origin, op: codec.Consume, queue: Queue, courier: _Courier) -> None:
        self.cid = op.cid
        self.origin = origin
        self.queue = queue
        self.no_ack = bool(op.flags & codec.NO_ACK)
        self.exclusive = bool(op.flags & codec.EXCLUSIVE)
        self.arguments = op.arguments
        priority = op.arguments.get("x-priority", 0)
        self.priority = priority if isinstance(priority, int) else 0
        self.credit = max(min(op.limit, UNLIMITED) - op.received, 0)
        self.pool: CreditPool | None = None
        self.output = origin.output
        self.channel = courier
        self.delivered = op.received  # the credit limit counts deliveries from earlier leaders too

    def deliver(self, entry: Entry) -> None:
        self.channel.deliver(self, entry)

    def cancelled_by_broker(self) -> None:
        self.channel.hub._remote_cancelled(self)


class _Origin:
    """What a node with consumers or gets on queues led here holds of them."""

    __slots__ = ("node", "consumers", "promised", "held", "output")

    def __init__(self, node: str) -> None:
        self.node = node
        self.consumers: dict[int, RemoteConsumer] = {}
        # Consumers whose CONSUMABLE call was answered yes, until their CONSUME (or CANCEL): cid -> queue.
        self.promised: dict[int, Queue] = {}
        # Unacked by that node, per queue: (the queue object, its seqs).
        self.held: dict[tuple[str, str], tuple[Queue, set[int]]] = {}
        self.output = CreditPool(OUTPUT_WINDOW)

    def hold(self, queue: Queue, seq: int) -> None:
        key = (queue.vhost, queue.name)
        held = self.held.get(key)
        if held is None or held[0] is not queue:
            held = self.held[key] = (queue, set())
        held[1].add(seq)


class _Reserved:
    """Messages a leader keeps unacked for whichever node claims them, until no node is left `waiting`:
    each leaves it by claiming, by dying, or at its deadline (then what is left is requeued)."""

    __slots__ = ("queue", "seqs", "waiting")

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.seqs: set[int] = set()
        self.waiting: dict[str, float] = {}  # node -> until when its claim is waited for


class Handled:
    """A batch handled at this node: its results, and what its publishes' confirms (and settlements'
    answers) wait for."""

    __slots__ = ("results", "published", "calls")

    def __init__(self) -> None:
        self.results: list[bytes | None] = []  # None: a result decided once it is safe
        self.published: list[tuple[int, int]] = []  # result index, the position it waits for
        self.calls: dict[int, bytes] = {}  # result index -> a call's result, once it is safe


def is_replicated_queue(queue: Queue) -> bool:
    return queue.durable and queue.exclusive_owner is None


class RemoteQueues(QueueRoles):
    def __init__(
        self,
        name: str,
        vhosts: dict[str, VirtualHost],
        leadership: Leadership,
        clock: Callable[[], float],
        *,
        publish_hold: float,
        cancel_after: float,
    ) -> None:
        self.name = name
        self.vhosts = vhosts
        self.leadership = leadership
        self.clock = clock
        # A publish to a queue without a leader waits this long for one, then is nacked.
        self.publish_hold = publish_hold
        # A consumer whose queue has had no reachable leader this long is cancelled (basic.cancel).
        self.cancel_after = cancel_after
        # Set by the server: the other nodes; there are ops for a node; whether the link to a node is up.
        self.peers: list[str] = []
        self.wake: Callable[[str], None] = lambda node: None
        self.link_up: Callable[[str], bool] = lambda node: False
        # Set by the cluster state: whether a node is alive (registered in etcd's membership).
        self.node_alive: Callable[[str], bool] = lambda node: True
        # Set by the node: tickets were settled (flush the channels' confirms).
        self.confirms_changed: Callable[[], None] = lambda: None
        # Set by the node: the unacked deliveries of the channels on a vhost, as tables of delivery tag ->
        # (seq, queue, consumer); a proxy that takes the place of a queue this node led adopts theirs.
        self.unacked_tables: Callable[[str], Iterable[MutableMapping[int, Any]]] = lambda vhost: ()
        self._outboxes: dict[str, _Outbox] = {}
        self.generation: dict[str, int] = {}  # per node: bumped each time the link to it breaks
        # Ours: consumers on proxies here.
        self._cids = itertools.count(1)
        self.subs: dict[int, _Subscription] = {}
        self._by_consumer: dict[int, _Subscription] = {}
        # Consumers cancelled here, by id, with when: deliveries still in flight to them go back (kept for
        # FORGET_CANCELLED seconds, or until the link to their leader breaks).
        self._cancelled: dict[int, tuple[_Subscription, float]] = {}
        self._waiting: set[ProxyQueue] = set()
        # The leader's: what other nodes consume and hold of queues led here, and what it keeps for claims.
        self.origins: dict[str, _Origin] = {}
        self._reserved: dict[tuple[str, str], _Reserved] = {}
        self._courier = _Courier(self)
        self._last_message: Message | None = None
        self._last_ticket: Ticket | None = None
        self.active = False

    def start(self) -> None:
        """The peer links run: from now on replicated queues another node leads are proxies here (recovery
        made instances of them all: the first reconcile replaces those this node does not lead)."""
        self.active = True
        for vhost in self.vhosts.values():
            vhost.proxies = self
        self.reconcile()

    # ---- what the vhost asks ---------------------------------------------------------------------------

    def proxy(self, vhost: VirtualHost, name: str, *, durable: bool, auto_delete: bool,
              arguments: dict[str, Any]) -> ProxyQueue | None:
        """The queue to hold for a new replicated queue: a proxy unless this node leads it."""
        if (vhost.name, name) in self.leadership.led:
            return None
        return ProxyQueue(
            name, vhost.name, vhost, self, durable=durable, auto_delete=auto_delete, arguments=arguments
        )

    def leader_of(self, queue: Queue) -> str | None:
        return self.leadership.leader((queue.vhost, queue.name), self.clock())

    # ---- outboxes ----------------------------------------------------------------------------------------

    def _send(self, node: str, op: codec.Op, result: Callable[[bytes | None], None] | None = None) -> _Outbox:
        return self._send_encoded(node, codec.encode_op(op), result)

    def _send_encoded(self, node: str, op: bytes, result: Callable[[bytes | None], None] | None = None
                      ) -> _Outbox:
        outbox = self._outboxes.get(node)
        if outbox is None:
            outbox = self._outboxes[node] = _Outbox()
        if not outbox.ops:
            self.wake(node)
        outbox.ops.append(op)
        if result is not None:
            outbox.results.append(result)
        return outbox

    def take(self, node: str) -> Batch | None:
        outbox = self._outboxes.pop(node, None)
        if outbox is None or not outbox.ops:
            return None
        return Batch(node, outbox)

    def batch_answered(self, batch: Batch, results: list[bytes] | None) -> None:
        """The node answered the batch (`results`, one per op that has one), or did not (None: the link
        broke, the node refused it, or it never went)."""
        if results is not None and len(results) != len(batch.results):
            log.error("node %s answered %d results for %d", batch.node, len(results), len(batch.results))
            results = None
        for i, callback in enumerate(batch.results):
            callback(None if results is None else results[i])
        if batch.delivered_bytes:
            origin = self.origins.get(batch.node)
            if origin is not None:
                origin.output.left += batch.delivered_bytes
                for consumer in list(origin.consumers.values()):
                    consumer.queue.credit_changed()
        self.confirms_changed()

    # ---- publishing through a proxy ----------------------------------------------------------------------

    def publish(self, proxy: ProxyQueue, message: Message) -> Ticket:
        if self._last_message is message and self._last_ticket is not None:
            ticket = self._last_ticket  # the same publish routed to several proxies
        else:
            ticket = self._last_ticket = Ticket()
            self._last_message = message
        ticket.parts += 1
        leader = self.leader_of(proxy)
        if proxy.waiting or leader is None or leader == self.name or not self.link_up(leader):
            self._hold(proxy, message, ticket, self.clock())  # behind the waiting ones: order holds
        else:
            self._publish_to(leader, proxy, message, ticket, self.clock())
        return ticket

    def _hold(self, proxy: ProxyQueue, message: Message, ticket: Ticket, since: float) -> None:
        proxy.waiting.append((message, ticket, since))
        self._waiting.add(proxy)

    def _publish_to(
        self, leader: str, proxy: ProxyQueue, message: Message, ticket: Ticket, since: float
    ) -> None:
        def answered(result: bytes | None) -> None:
            if result == codec.NOT_LEADER_YET and self.clock() - since < self.publish_hold:
                self._hold(proxy, message, ticket, since)  # elected, not installed yet: sent again
                return
            ticket.parts -= 1
            if result != codec.CONFIRMED:
                ticket.failed = True

        self._send_encoded(leader, codec.encode_publish(proxy.vhost, proxy.name, message), answered)

    def _flush_waiting(self, proxy: ProxyQueue, now: float) -> None:
        leader = self.leader_of(proxy)
        if leader is not None and leader != self.name and self.link_up(leader):
            waiting, proxy.waiting = proxy.waiting, []
            for message, ticket, since in waiting:
                self._publish_to(leader, proxy, message, ticket, since)
        else:
            expired = 0
            for _, ticket, since in proxy.waiting:
                if now - since < self.publish_hold:
                    break
                ticket.parts -= 1
                ticket.failed = True
                expired += 1
            if expired:
                del proxy.waiting[:expired]
                self.confirms_changed()
        if not proxy.waiting:
            self._waiting.discard(proxy)

    # ---- consumers on proxies here -----------------------------------------------------------------------

    def new_cid(self) -> int:
        """An id for a consumer here, before it exists: its CONSUMABLE call carries it."""
        return next(self._cids)

    def attach(self, proxy: ProxyQueue, consumer: Any, cid: int = 0) -> None:
        """`cid`: the one its CONSUMABLE call carried (the leader keeps its place under it), else 0."""
        now = self.clock()
        sub = _Subscription(cid or next(self._cids), consumer, proxy, now)
        self.subs[sub.cid] = sub
        self._by_consumer[id(consumer)] = sub
        self._attach(sub, now)

    def _attach(self, sub: _Subscription, now: float) -> bool:
        leader = self.leader_of(sub.proxy)
        if leader is None or leader == self.name or now < sub.retry_at or not self.link_up(leader):
            return False
        consumer = sub.consumer
        sub.node = leader
        sub.generation = self.generation.get(leader, 0)
        flags = (codec.NO_ACK if consumer.no_ack else 0) | (codec.EXCLUSIVE if consumer.exclusive else 0)
        sub.told = sub.limit()
        self._send(leader, codec.Consume(sub.proxy.vhost, sub.proxy.name, sub.cid, flags, sub.told,
                                         dict(consumer.arguments), sub.received))
        return True

    def detach(self, consumer: Any) -> None:
        sub = self._by_consumer.pop(id(consumer), None)
        if sub is None:
            return
        del self.subs[sub.cid]
        sub.give_back()
        if sub.node is not None:
            self._send(sub.node, codec.Cancel(sub.cid))
            self._cancelled[sub.cid] = (sub, self.clock())

    def credit(self, consumer: Any) -> None:
        sub = self._by_consumer.get(id(consumer))
        if sub is not None and sub.node is not None:
            limit = sub.limit()
            if limit != sub.told:
                sub.told = limit
                self._send(sub.node, codec.Credit(sub.cid, limit))

    def settle(self, proxy: ProxyQueue, how: str, taken: list[tuple[str, int, int]]) -> None:
        """Settlements of deliveries from leaders: sent to the node each came from, and kept until it
        answers that its log holds them; if its link broke since, kept for the next claim."""
        code = _HOW[how]
        by_node: dict[str, list[int]] = {}
        here: list[int] = []
        for node, generation, seq in taken:
            if node == self.name:
                here.append(seq)  # claimed when this node was elected: its queue is here
            elif generation == self.generation.get(node, 0):
                by_node.setdefault(node, []).append(seq)
                proxy.unsettled[seq] = code
            else:
                proxy.unsettled[seq] = code
                proxy.claim_due = True
        if here:
            self._settle_held(self.name, proxy.vhost, proxy.name, code, here)
        for node, seqs in by_node.items():
            self._send(node, codec.Settle(proxy.vhost, proxy.name, code, tuple(seqs)),
                       functools.partial(self._settles_answered, proxy, [(code, seq) for seq in seqs]))

    def _settles_answered(
        self, proxy: ProxyQueue, settles: list[tuple[int, int]], result: bytes | None
    ) -> None:
        """A leader answered settlements (or a claim carrying them): forgotten once it says its log holds
        them; otherwise claimed again (not applied, the leader not installed yet, deposed, a broken link)."""
        if result != codec.CONFIRMED:
            proxy.claim_due = True
            return
        unsettled = proxy.unsettled
        for how, seq in settles:
            if unsettled.get(seq) == how:
                del unsettled[seq]

    def _claim(self, proxy: ProxyQueue, leader: str) -> None:
        """Hand `leader` what this node's clients hold of the queue and the settlements not known to be
        replicated; from now on their settlements go there."""
        generation = self.generation.get(leader, 0)
        _move_held(proxy, leader, generation)
        held = tuple(sorted({seq for _, _, seq in proxy.remote_seqs.values()}))
        settles = [(how, seq) for seq, how in proxy.unsettled.items()]
        self._send(leader, codec.Claim(proxy.vhost, proxy.name, held, tuple(settles)),
                   functools.partial(self._settles_answered, proxy, settles))

    def _claim_held(self, proxies: list[ProxyQueue]) -> None:
        """A proxy claims, at each new leader (or link to it), what its clients hold; an empty claim if
        nothing: the leader then knows this node holds nothing more, and stops keeping messages for it."""
        for proxy in proxies:
            leader = self.leader_of(proxy)
            if leader is None or leader == self.name or not self.link_up(leader):
                continue
            if proxy.claim_due or proxy.held_at != (leader, self.generation.get(leader, 0)):
                self._claim(proxy, leader)

    def call(self, node: str, call: codec.Call, answered: Callable[[bytes | None], None]) -> None:
        self._send(node, call, answered)

    def ask_counts(self, proxies: list[ProxyQueue], answered: Callable[[], None]) -> int:
        """Ask each proxy's leader for its counts (which the proxy then shows); `answered` is called as
        each answer comes. Returns how many were asked (a proxy without a reachable leader is not)."""
        asked = 0
        for proxy in proxies:
            leader = self.leader_of(proxy)
            if leader is None or leader == self.name or not self.link_up(leader):
                continue

            def got(payload: bytes | None, proxy: ProxyQueue = proxy) -> None:
                if payload is not None:
                    try:
                        result = codec.decode_call_result(payload)
                    except codec.CodecError:
                        result = None
                    if result is not None and not result.error_code:
                        proxy.known_counts = (result.message_count, result.consumer_count, result.unacked)
                answered()

            self._send(leader, codec.Call(proxy.vhost, proxy.name, codec.COUNTS), got)
            asked += 1
        return asked

    def call_done(self, call: codec.Call, answer: codec.CallResult) -> None:
        """The method that made `call` is done (or its connection went): a consumer the leader promised a
        place to that was never attached gives it back, so that it does not keep others out."""
        if (call.what == codec.CONSUMABLE and call.cid and not answer.error_code and answer.node
                and call.cid not in self.subs and answer.generation == self.generation.get(answer.node, 0)):
            self._send(answer.node, codec.Cancel(call.cid))

    def unclaimed(self, call: codec.Call, answer: codec.CallResult) -> None:
        """A basic.get's message whose connection closed before the answer came: back to the leader."""
        if answer.generation == self.generation.get(answer.node, 0):
            self._send(answer.node, codec.Settle(call.vhost, call.queue, codec.REQUEUE, (answer.seq,)),
                       _ignore)

    def _delivered_here(self, node: str, op: codec.Deliver) -> None:
        sub = self.subs.get(op.cid)
        generation = self.generation.get(node, 0)
        if sub is None or sub.node != node or sub.generation != generation:
            stale = sub or self._cancelled.get(op.cid, (None, 0.0))[0]
            if stale is not None and not stale.consumer.no_ack:
                self._send(node, codec.Settle(stale.proxy.vhost, stale.proxy.name, codec.REQUEUE, (op.seq,)),
                           _ignore)
            return
        sub.arrived()
        consumer = sub.consumer
        consumer.credit -= 1
        entry = sub.proxy.received(node, generation, op.seq, op.message, op.redelivered, not consumer.no_ack)
        consumer.channel.deliver(consumer, entry)

    def _cancelled_here(self, node: str, cid: int) -> None:
        sub = self.subs.get(cid)
        if sub is not None and sub.node == node:
            now = self.clock()
            sub.node = None
            sub.give_back()
            sub.retry_at = now + RETRY_ATTACH
            if sub.detached_at < now - RETRY_ATTACH * 2:
                sub.detached_at = now

    def _cancel_consumer(self, sub: _Subscription) -> None:
        """No leader could take the consumer: cancel it as RabbitMQ does (basic.cancel to the client)."""
        proxy, consumer = sub.proxy, sub.consumer
        log.warning("consumer on queue %r in vhost %r cancelled: no leader reachable for %.0f s",
                    proxy.name, proxy.vhost, self.cancel_after)
        proxy.remove_consumer(consumer)
        consumer.cancelled_by_broker()

    def proxy_deleted(self, proxy: ProxyQueue) -> None:
        for sub in [s for s in self.subs.values() if s.proxy is proxy]:
            self.detach(sub.consumer)
        for _, ticket, _ in proxy.waiting:
            ticket.parts -= 1
            ticket.failed = True
        proxy.waiting.clear()
        self._waiting.discard(proxy)

    # ---- the leader's side -----------------------------------------------------------------------------

    def _origin(self, node: str) -> _Origin:
        origin = self.origins.get(node)
        if origin is None:
            origin = self.origins[node] = _Origin(node)
        return origin

    def _led_queue(self, vhost: str, name: str) -> Queue | None:
        """The leader's queue, if this node leads the queue and replication has installed it (not yet, a
        moment after the election: the asking node is told "not the leader" and asks again)."""
        host = self.vhosts.get(vhost)
        queue = host.queues.get(name) if host is not None else None
        if (
            queue is None
            or isinstance(queue, ProxyQueue)
            or isinstance(queue.journal, NotLeaderJournal)
            or not self.leadership.is_leader((vhost, name), self.clock())
        ):
            return None
        return queue

    def led_here(self, vhost: str, name: str) -> bool:
        return self._led_queue(vhost, name) is not None

    def handle(self, node: str, payload: bytes) -> Handled:
        """A batch from `node`: carried out in order. Raises CodecError on a malformed batch."""
        handled = Handled()
        for op in codec.decode_ops(payload):
            if isinstance(op, codec.Publish):
                self._published(op, handled)
            elif isinstance(op, codec.Deliver):
                self._delivered_here(node, op)
            elif isinstance(op, codec.Settle):
                self._settled(node, op, handled)
            elif isinstance(op, codec.Claim):
                self._claimed(node, op, handled)
            elif isinstance(op, codec.Credit):
                self._credited(node, op)
            elif isinstance(op, codec.Consume):
                self._consumed(node, op)
            elif isinstance(op, codec.Cancel):
                self._cancel(node, op.cid)
            elif isinstance(op, codec.Cancelled):
                self._cancelled_here(node, op.cid)
            elif isinstance(op, codec.Call) and op.what == codec.PURGE:
                self._purge_call(op, handled)
            elif isinstance(op, codec.Call):
                handled.results.append(codec.encode_call_result(self._call(node, op)))
        return handled

    def confirmed(self, handled: Handled, index: int, ok: bool) -> None:
        """The publish (or call) at `index` is safe (its confirm condition held: `ok`), or failed."""
        call = handled.calls.pop(index, None)
        if call is not None:
            failed = codec.CallResult(codec.NOT_LEADER, f"{self.name} was deposed before it was replicated")
            handled.results[index] = call if ok else codec.encode_call_result(failed)
        else:
            handled.results[index] = codec.CONFIRMED if ok else codec.REFUSED

    def purge(self, vhost: str, name: str) -> tuple[codec.CallResult, int]:
        """queue.purge of a queue led here, and the position its purge-ok waits for (0: none), as a
        confirm's: a purge-ok the next leader's log may not hold would let the purged messages come back.
        NOT_LEADER (and 0) when this node does not lead it."""
        queue = self._led_queue(vhost, name)
        if queue is None:
            return codec.CallResult(codec.NOT_LEADER, f"{self.name} does not lead it"), 0
        count = queue.purge()
        journal = queue.journal
        position = journal.barrier() if isinstance(journal, ReplicatedJournal) else 0
        if position is None:
            return codec.CallResult(codec.NOT_LEADER, f"{self.name} no longer leads it"), 0
        return codec.CallResult(message_count=count), position

    def _purge_call(self, op: codec.Call, handled: Handled) -> None:
        result, position = self.purge(op.vhost, op.queue)
        if position:
            handled.published.append((len(handled.results), position))
            handled.calls[len(handled.results)] = codec.encode_call_result(result)
            handled.results.append(None)
        else:
            handled.results.append(codec.encode_call_result(result))

    def finish(self, handled: Handled) -> bytes:
        """The batch's reply, once each publish's confirm condition held or failed."""
        return codec.encode_results([result or codec.REFUSED for result in handled.results])

    def _published(self, op: codec.Publish, handled: Handled) -> None:
        queue = self._led_queue(op.vhost, op.queue)
        if queue is None:  # not the leader (yet, or any more): the other node asks the leader again
            handled.results.append(codec.NOT_LEADER_YET)
            return
        position = queue.enqueue(op.message)
        if position is None:
            handled.results.append(codec.REFUSED)
            return
        handled.published.append((len(handled.results), position))
        handled.results.append(None)

    def _unpromise(self, node: str, cid: int) -> None:
        """The consumer's promised place goes (it registers now, or gave up)."""
        origin = self.origins.get(node)
        queue = origin.promised.pop(cid, None) if origin is not None else None
        if queue is not None:
            queue.promised.pop((node, cid), None)

    def _consumed(self, node: str, op: codec.Consume) -> None:
        self._unpromise(node, op.cid)  # checked against everyone else, it takes its place now
        queue = self._led_queue(op.vhost, op.queue)
        if queue is None or queue.exclusive_use(bool(op.flags & codec.EXCLUSIVE)):
            self._send(node, codec.Cancelled(op.cid))
            return
        origin = self._origin(node)
        consumer = RemoteConsumer(origin, op, queue, self._courier)
        origin.consumers[op.cid] = consumer
        queue.add_consumer(consumer)

    def _credited(self, node: str, op: codec.Credit) -> None:
        origin = self.origins.get(node)
        consumer = origin.consumers.get(op.cid) if origin is not None else None
        if consumer is not None:
            consumer.queue.credit(consumer, max(min(op.limit, UNLIMITED) - consumer.delivered, 0))

    def _cancel(self, node: str, cid: int) -> None:
        self._unpromise(node, cid)
        origin = self.origins.get(node)
        consumer = origin.consumers.pop(cid, None) if origin is not None else None
        if consumer is None:
            return
        queue = consumer.queue
        queue.remove_consumer(consumer)
        host = self.vhosts.get(queue.vhost)
        if queue.auto_delete and not queue.consumers and not queue.deleted and host is not None:
            host.remove_queue(queue)  # its last consumer, which was on another node, went

    def _settled(self, node: str, op: codec.Settle, handled: Handled) -> None:
        """Settlements from `node`; answered once the log holds them, or at once with REFUSED when one was
        not held for that node (the node claims it again, with what it holds)."""
        queue = self._led_queue(op.vhost, op.queue)
        applied = self._settle_held(node, op.vhost, op.queue, op.how, op.seqs)
        self._answer_when_replicated(queue if applied else None, handled)

    def _settle_held(self, node: str, vhost: str, name: str, how: int, seqs: Sequence[int]) -> bool:
        """Apply what `node` settled of what it holds; False if some seq was not held for it (requeued
        when its link broke, or the queue moved)."""
        origin = self.origins.get(node)
        held = origin.held.get((vhost, name)) if origin is not None else None
        if held is None:
            return False
        queue, mine = held
        valid = [seq for seq in seqs if seq in mine and seq in queue.checked_out]
        mine.difference_update(valid)
        if valid:
            if how == codec.ACK:
                queue.settle(valid)
            elif how == codec.REJECT:
                queue.reject(valid)
            else:
                queue.requeue(valid)
        return len(valid) == len(seqs)

    def _answer_when_replicated(self, queue: Queue | None, handled: Handled) -> None:
        """A result that says everything `queue`'s log holds so far is replicated (waiting until it is);
        REFUSED without a queue, or if this node no longer leads it."""
        journal = queue.journal if queue is not None else None
        position = journal.barrier() if isinstance(journal, ReplicatedJournal) else (0 if queue else None)
        if position is None:
            handled.results.append(codec.REFUSED)
        elif position == 0:
            handled.results.append(codec.CONFIRMED)
        else:
            handled.published.append((len(handled.results), position))
            handled.results.append(None)

    def _claimed(self, node: str, op: codec.Claim, handled: Handled) -> None:
        """A node's claim (see the module's docstring): what it holds stays unacked for it (set aside, or
        still ready here); then its settlements are applied."""
        queue = self._led_queue(op.vhost, op.queue)
        if queue is None:
            handled.results.append(codec.NOT_LEADER_YET)
            return
        self._take_for(node, queue, op.held, op.settles)
        reserved = self._reserved.get((op.vhost, op.queue))
        if reserved is not None and reserved.queue is queue:
            reserved.waiting.pop(node, None)
            if not reserved.waiting:
                self._release_reserved(reserved)  # every node that could hold them has claimed
        self._answer_when_replicated(queue, handled)

    def _take_for(
        self, node: str, queue: Queue, held: Iterable[int], settles: Iterable[tuple[int, int]]
    ) -> None:
        key = (queue.vhost, queue.name)
        origin = self._origin(node)
        current = origin.held.get(key)
        mine = current[1] if current is not None and current[0] is queue else set()
        reserved = self._reserved.get(key)
        spare = reserved.seqs if reserved is not None and reserved.queue is queue else set()
        by_how: dict[int, list[int]] = {}
        for how, seq in settles:
            by_how.setdefault(how, []).append(seq)
        # A requeue takes nothing from the ready ones (it would count a return for a message never out).
        requeued = set(by_how.get(codec.REQUEUE, ()))
        from_ready = []
        for seq in (*held, *(seq for _, seq in settles)):
            if seq in mine:
                continue
            if seq in spare:
                spare.discard(seq)
                origin.hold(queue, seq)
            elif seq not in requeued:
                from_ready.append(seq)
        for entry in queue.take_seqs(from_ready):
            origin.hold(queue, entry.seq)
        for how, seqs in by_how.items():
            self._settle_held(node, queue.vhost, queue.name, how, seqs)

    def _reserve(self, queue: Queue, seqs: Iterable[int], claimants: dict[str, float]) -> None:
        """Keep `seqs` (checked out, nobody's) for the claims of `claimants` (node -> until when, at
        least)."""
        key = (queue.vhost, queue.name)
        reserved = self._reserved.get(key)
        if reserved is None or reserved.queue is not queue:
            reserved = self._reserved[key] = _Reserved(queue)
        reserved.seqs.update(seqs)
        for node, until in claimants.items():
            reserved.waiting[node] = max(reserved.waiting.get(node, until), until)

    def _expire_reserved(self, now: float) -> None:
        """A node that died (its link down and its lease gone: one whose link is up runs, and claims, even
        between a lost lease and its new one), or whose claim did not come in time, is waited for no more;
        a reservation nobody is waited for any more is released."""
        for reserved in list(self._reserved.values()):
            waiting = reserved.waiting
            for node in [n for n, until in waiting.items() if now >= until or self._dead(n)]:
                del waiting[node]
            if not waiting or reserved.queue.deleted:
                self._release_reserved(reserved)

    def _dead(self, node: str) -> bool:
        return not self.link_up(node) and not self.node_alive(node)

    def _release_reserved(self, reserved: _Reserved) -> None:
        """What no claim took comes back, redelivered."""
        queue = reserved.queue
        key = (queue.vhost, queue.name)
        if self._reserved.get(key) is reserved:
            del self._reserved[key]
        back = [seq for seq in reserved.seqs if seq in queue.checked_out]
        if back and not queue.deleted:  # (a queue replaced since dropped its reservation: `_replace`)
            queue.requeue(back)

    def _deliver_remote(self, consumer: RemoteConsumer, entry: Entry) -> None:
        origin = consumer.origin
        if not consumer.no_ack:
            origin.hold(consumer.queue, entry.seq)
            _log_redelivery(consumer.queue, entry)
        consumer.delivered += 1
        op = codec.Deliver(consumer.cid, entry.seq, entry.redelivered, entry.message)
        outbox = self._send(origin.node, op)
        outbox.delivered_bytes += entry.message.size + DELIVERY_OVERHEAD

    def _remote_cancelled(self, consumer: RemoteConsumer) -> None:
        """The leader's queue went away (deleted, or this node no longer leads it)."""
        if consumer.origin.consumers.pop(consumer.cid, None) is not None:
            self._send(consumer.origin.node, codec.Cancelled(consumer.cid))

    def _call(self, node: str, op: codec.Call) -> codec.CallResult:
        queue = self._led_queue(op.vhost, op.queue)
        if queue is None:
            return codec.CallResult(codec.NOT_LEADER, f"{self.name} does not lead it")
        try:
            if op.what == codec.COUNTS:
                return codec.CallResult(
                    message_count=queue.message_count, consumer_count=queue.consumer_count,
                    unacked=queue.unacked,
                )
            if op.what == codec.DELETE:
                return codec.CallResult(message_count=_check_delete(queue, op.flags))
            if op.what == codec.CONSUMABLE:
                exclusive = bool(op.flags & codec.CALL_EXCLUSIVE)
                if queue.exclusive_use(exclusive):
                    return codec.CallResult(ACCESS_REFUSED, exclusive_use_text(queue.vhost, queue.name))
                if op.cid:  # its place is kept: no other consumer's check passes against it meanwhile
                    self._unpromise(node, op.cid)
                    queue.promised[(node, op.cid)] = exclusive
                    self._origin(node).promised[op.cid] = queue
                return codec.CallResult(consumer_count=queue.consumer_count)
            if op.what == codec.GET:
                entry = queue.take_now()  # answered at once: a head on disk is read back here
                if entry is None:
                    return codec.CallResult(message_count=queue.message_count)
                if op.flags & codec.CALL_NO_ACK:
                    queue.settle([entry.seq])
                else:
                    self._origin(node).hold(queue, entry.seq)
                    _log_redelivery(queue, entry)
                return codec.CallResult(message_count=queue.message_count, seq=entry.seq,
                                        redelivered=entry.redelivered, message=entry.message)
        except ChannelError as error:
            return codec.CallResult(error.code, error.text)
        return codec.CallResult(NOT_FOUND, f"unknown call {op.what}")

    # ---- links and leaders -----------------------------------------------------------------------------

    def link_down(self, node: str) -> Batch | None:
        """The link to `node` broke: what it held of queues led here comes back (redelivered); consumers here
        registered there will register again. Returns the ops queued for it, which the caller fails."""
        self.generation[node] = self.generation.get(node, 0) + 1
        now = self.clock()
        for sub in self.subs.values():
            if sub.node == node:
                sub.node = None
                sub.give_back()
                sub.detached_at = now
        for cid in [cid for cid, (sub, _) in self._cancelled.items() if sub.node == node]:
            del self._cancelled[cid]
        # What that node held stays set aside while it lives: a link that broke (the peer timeout, a
        # partition of the link alone) comes back, and its claim then takes them, with the acks its
        # clients sent meanwhile. A reservation already waiting for its claim waits as long.
        until = now + self.cancel_after
        for reserved in self._reserved.values():
            if node in reserved.waiting:
                reserved.waiting[node] = max(reserved.waiting[node], until)
        origin = self.origins.pop(node, None)
        if origin is not None:
            for cid, queue in origin.promised.items():
                queue.promised.pop((node, cid), None)
            for consumer in origin.consumers.values():
                consumer.queue.remove_consumer(consumer)
            for queue, seqs in origin.held.values():
                back = [seq for seq in seqs if seq in queue.checked_out]
                if back:
                    self._reserve(queue, back, {node: until})
        return self.take(node)

    def reconcile(self) -> None:
        """After leadership changed (or time passed): a replicated queue this node does not lead is a
        proxy here (the leader's queue is installed by replication: `lead`); proxies' consumers and
        waiting publishes follow the leader."""
        now = self.clock()
        led = self.leadership.led
        proxies: list[ProxyQueue] = []
        for vhost in self.vhosts.values():
            for queue in list(vhost.queues.values()):
                if isinstance(queue, ProxyQueue):
                    proxies.append(queue)
                elif is_replicated_queue(queue) and (vhost.name, queue.name) not in led:
                    self.follow(vhost, queue)
        self._expire_reserved(now)
        self._claim_held(proxies)  # before the consumers attach: the leader keeps these out of their way
        for proxy in list(self._waiting):
            self._flush_waiting(proxy, now)
        for sub in list(self.subs.values()):
            self._follow_leader(sub, now)
        if self._cancelled:
            for cid in [cid for cid, (_, at) in self._cancelled.items() if now - at > FORGET_CANCELLED]:
                del self._cancelled[cid]

    def _follow_leader(self, sub: _Subscription, now: float) -> None:
        if sub.node is not None:
            if sub.node == self.leader_of(sub.proxy):
                return
            if self.link_up(sub.node):
                self._send(sub.node, codec.Cancel(sub.cid))
            sub.node = None
            sub.give_back()
            sub.detached_at = now
        if not self._attach(sub, now) and now - sub.detached_at > self.cancel_after:
            self._cancel_consumer(sub)

    # ---- roles (broker/cluster/roles.py's contract with replication) --------------------------------------

    def lead(self, vhost: VirtualHost, queue: Queue, delivered: Sequence[int] = ()) -> None:
        """Replication built the leader's queue (this node was elected): it takes the place of what the
        table held (a proxy, or a former instance), with its consumers and the publishes waiting there.
        `delivered`: the messages its log says were delivered, set aside for claims (before any consumer
        can take them); what this node's own clients held through the proxy is theirs at once."""
        current = vhost.queues.get(queue.name)
        if current is not queue:
            # A node whose link is down now but that lives claims once the link is back, as after a cut.
            now = self.clock()
            claimants = {
                node: now + (RESERVE_FOR if self.link_up(node) else self.cancel_after)
                for node in self.peers if self.link_up(node) or self.node_alive(node)
            }
            spare = queue.take_seqs(delivered, log=False) if claimants else []
            if spare:
                self._reserve(queue, [entry.seq for entry in spare], claimants)
            if isinstance(current, ProxyQueue) and (current.remote_seqs or current.unsettled):
                self._take_here(current, queue)
        if current is None:
            vhost.queues[queue.name] = queue
            return
        if current is queue:
            return
        self._replace(vhost, current, queue)
        if isinstance(current, ProxyQueue):
            for message, ticket, _ in current.waiting:
                position = queue.enqueue(message)
                ticket.parts -= 1
                if position is None:
                    ticket.failed = True
                elif position > ticket.local:
                    ticket.local = position
            current.waiting.clear()
            self._waiting.discard(current)
            self.confirms_changed()
        log.info("queue %r in vhost %r: led by this node", queue.name, vhost.name)

    def _take_here(self, proxy: ProxyQueue, queue: Queue) -> None:
        """This node leads the queue now: what its clients held through `proxy` is held here, and their
        later settlements (still to `proxy`, whose tags they hold) apply to `queue` (see `settle`)."""
        held = [seq for _, _, seq in proxy.remote_seqs.values()]
        self._take_for(self.name, queue, held, [(how, seq) for seq, how in proxy.unsettled.items()])
        proxy.unsettled.clear()
        _move_held(proxy, self.name, 0)

    def follow(self, vhost: VirtualHost, queue: Queue) -> None:
        """This node does not lead the queue (any more): a proxy takes its place."""
        if vhost.queues.get(queue.name) is not queue:
            return
        proxy = ProxyQueue(
            queue.name, vhost.name, vhost, self,
            durable=queue.durable, auto_delete=queue.auto_delete, arguments=queue.arguments,
        )
        journal = queue.journal
        settled = journal.leader.settled_since_commit() if isinstance(journal, ReplicatedJournal) else []
        self._replace(vhost, queue, proxy)
        self._hand_over(queue, proxy, settled)
        # Inert from now on (its journal writes nothing here: a deposed leader's, or a non-leader's): no
        # timer of its own expires, dead-letters or forwards what the leader decides on, and nothing
        # keeps the object or its pages.
        queue.delete()
        log.info("queue %r in vhost %r: led by another node, this node proxies it", queue.name, vhost.name)

    def _hand_over(self, old: Queue, proxy: ProxyQueue, settled: Iterable[int]) -> None:
        """This node no longer leads `old` (deposed while alive: its lease lapsed, or a newer epoch):
        what its clients hold unacked of it, directly or through the proxy it had before its election
        (claimed in place then), is adopted by `proxy` under the same delivery tags, and claimed at the
        next leader with the settlements they make meanwhile, as a consumer's on any other node would be.
        So are the settlements `old`'s log made that no in-sync replica may have (`settled`, including
        acks handled in the instant between waking from a pause and noticing the lost lease): the next
        leader applies them, so an acked message does not come back."""
        for seq in settled:
            proxy.unsettled[seq] = codec.ACK
            proxy.claim_due = True
        me, name, vhost = self.name, proxy.name, proxy.vhost
        for table in self.unacked_tables(vhost):
            adopted = []
            for tag, (seq, queue, consumer) in table.items():
                if queue is old:
                    adopted.append((tag, seq, consumer))
                elif isinstance(queue, ProxyQueue) and queue is not proxy and queue.name == name \
                        and queue.vhost == vhost:
                    held = queue.remote_seqs.get(seq)
                    if held is not None and held[0] == me:
                        del queue.remote_seqs[seq]
                        adopted.append((tag, held[2], consumer))
            for tag, seq, consumer in adopted:
                table[tag] = (proxy.adopt(seq), proxy, consumer)

    def _replace(self, vhost: VirtualHost, old: Queue, new: Queue) -> None:
        """`new` in `old`'s place: in the table, in every binding (in its place), and for this node's
        consumers; other nodes' consumers of `old` are cancelled to them (they attach again to the leader)
        and what they held is requeued on `old`."""
        vhost.queues[new.name] = new
        for exchange in vhost.exchanges.values():
            exchange.replace_destination(old, new)
        reserved = self._reserved.get((vhost.name, old.name))
        if reserved is not None and reserved.queue is old:
            del self._reserved[(vhost.name, old.name)]
        for origin in self.origins.values():
            for consumer in [c for c in origin.consumers.values() if c.queue is old]:
                del origin.consumers[consumer.cid]
                old.remove_consumer(consumer)
                self._send(origin.node, codec.Cancelled(consumer.cid))
            held = origin.held.get((vhost.name, old.name))
            if held is not None and held[0] is old:
                del origin.held[(vhost.name, old.name)]
                back = [seq for seq in held[1] if seq in old.checked_out]
                if back:
                    old.requeue(back)
        for local in list(old.consumers):  # this node's channels' consumers (queues/consumer.Consumer)
            _move_consumer(local, old, new)


def _log_redelivery(queue: Queue, entry: Entry) -> None:
    """A first delivery records itself in the log; a redelivered one does not (queue.py), but a message
    out with another node must be known as delivered to the next leader, which then sets it aside for
    that node's claim."""
    if entry.redelivered and entry.logged:
        queue.journal.delivered(entry)


def _ignore(result: bytes | None) -> None:
    """The answer to a settlement nobody waits for (every settlement has one: see remote_codec)."""


def _move_held(proxy: ProxyQueue, node: str, generation: int) -> None:
    """What the proxy's clients hold is held at `node`, over the link of `generation`, from now on."""
    proxy.remote_seqs = {local: (node, generation, seq) for local, (_, _, seq) in proxy.remote_seqs.items()}
    proxy.held_at = (node, generation)
    proxy.claim_due = False


def _move_consumer(consumer: Any, source: Queue, target: Queue) -> None:
    """A channel's consumer goes on on the queue that took `source`'s place (its unacked deliveries stay
    `source`'s: their settlements go where they came from)."""
    source.remove_consumer(consumer)
    consumer.queue = target
    consumer.credit = consumer.wanted_credit()
    target.add_consumer(consumer)


def _check_delete(queue: Queue, flags: int) -> int:
    if flags & codec.IF_UNUSED and queue.consumers:
        raise ChannelError(PRECONDITION_FAILED, f"queue '{queue.name}' in vhost '{queue.vhost}' in use")
    if flags & codec.IF_EMPTY and queue.message_count:
        raise ChannelError(PRECONDITION_FAILED, f"queue '{queue.name}' in vhost '{queue.vhost}' not empty")
    return queue.message_count


def exclusive_use_text(vhost: str, queue: str) -> str:
    """RabbitMQ's 403 text for a consumer a classic queue refuses."""
    return f"queue '{queue}' in vhost '{vhost}' in exclusive use"


def no_leader_text(vhost: str, queue: str, why: str) -> str:
    """RabbitMQ's 404 for a durable queue whose node is down, with the reason."""
    return f"queue '{queue}' in vhost '{vhost}' has no reachable leader ({why})"

