"""One AMQP channel: its consumers, unacked deliveries, prefetch, confirms and transactions."""

from __future__ import annotations

import base64
import itertools
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Container, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from pamqp.commands import Basic, Channel, Confirm, Exchange, Queue, Tx

from leveret.amqp import fastpath
from leveret.amqp.codec import build
from leveret.amqp.constants import (
    ACCESS_REFUSED,
    COMMAND_INVALID,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    SYNTAX_ERROR,
)
from leveret.amqp.errors import ChannelError, ConnectionLevelError
from leveret.amqp.properties import HEADERS, REPLY_TO, PropertiesError, check_headers
from leveret.amqp.tables import TableError
from leveret.broker.cluster import remote_codec
from leveret.broker.cluster.proxy import ProxyQueue, is_proxy
from leveret.broker.cluster.remote import Ticket
from leveret.broker.cluster.replication import ReplicatedJournal
from leveret.broker.exchanges.registry import exchange_class
from leveret.broker.message import Message
from leveret.broker.queues.arguments import (
    amqp_type,
    check_server_named_allowed,
    queue_type,
    validate_consumer_arguments,
)
from leveret.broker.queues.consumer import Consumer
from leveret.broker.queues.expiry import check_expiration
from leveret.broker.queues.paging import HeadLoading
from leveret.broker.queues.queue import Entry
from leveret.broker.queues.queue import Queue as BrokerQueue
from leveret.broker.queues.subscriber import CreditPool
from leveret.broker.sender_selected import split_routing_keys
from leveret.broker.session import reply_to
from leveret.broker.session.ack_timeout import DeliveryMarks, timeout_text
from leveret.broker.vhost import DEFAULT_EXCHANGE, check_not_default_exchange, server_named_queue

if TYPE_CHECKING:
    from leveret.amqp.connection import ServerConnection
    from leveret.broker.exchanges.base import Exchange as BrokerExchange
    from leveret.broker.session.services import NodeServices
    from leveret.broker.vhost import VirtualHost


# The high byte of the property flags: reply-to is bit 9, headers bit 13.
_REPLY_TO_OR_HEADERS = (REPLY_TO | HEADERS) >> 8
_HEADERS_FLAG = HEADERS >> 8


# A delivery awaiting ack: the entry's seq in the queue it came from (which holds the entry until it is
# settled), the queue, and its consumer (None for basic.get). A plain tuple: one is made per delivery,
# and a tuple costs a tenth of an object with attributes.
Unacked = tuple[int, BrokerQueue, Consumer | None]


class ChannelOwner(Protocol):
    """What a channel needs of its connection (ConnectionSession, which imports this module)."""

    @property
    def node(self) -> NodeServices: ...

    @property
    def conn(self) -> ServerConnection: ...

    @property
    def vhost(self) -> VirtualHost: ...

    @property
    def username(self) -> str: ...

    @property
    def output(self) -> CreditPool:
        """The bound on the connection's output that the queues draw deliveries on."""

    def wake(self) -> None:
        """There is output to send."""

    def check_permission(self, action: str, kind: str, name: str) -> None: ...

    def check_topic_permission(self, action: str, exchange: BrokerExchange, routing_key: str) -> None: ...

    def has_topic_permission(self, exchange: str) -> bool: ...

    def remote_answer(self, call: remote_codec.Call) -> remote_codec.CallResult:
        """The answer of the leader of a queue led elsewhere; raises to hold the method until it comes."""

    def known_answer(self, call: remote_codec.Call) -> remote_codec.CallResult | None:
        """That answer, if the method already had it (it is being handled again)."""

    def consumer_cid(self) -> int:
        """The id a basic.consume's consumer has at a leader elsewhere (the same when handled again)."""

    def head_ready(self) -> None:
        """The queue head a held basic.get waited for (HeadPending) is in memory: handle it again."""


class HeadPending(Exception):  # noqa: N818  (not an error: "wait for the queue's head")
    """Raised by basic.get when the queue's next messages are being read back from disk: the connection
    holds the method (and what follows it) until the queue says they are in memory (HEAD_READY), then
    handles it again."""


_NO_CONFIRMS: deque[tuple[int, int, bool]] = deque(maxlen=0)


class _Transaction:
    """Publishes and settlements held back until tx.commit."""

    def __init__(self) -> None:
        self.actions: list[Callable[[], None]] = []
        # Deliveries acked, nacked or rejected in the transaction, by tag: unacked again on rollback or
        # close. The actions read them from here at commit (a queue's place may change meanwhile).
        self.held: dict[int, Unacked] = {}

    def take_held(self) -> list[tuple[int, Unacked]]:
        held, self.held = self.held, {}
        return list(held.items())


class ChannelSession:
    def __init__(self, session: ChannelOwner, number: int) -> None:
        self.session = session
        self.number = number
        self.conn = session.conn
        self.vhost = session.vhost
        self.consumers: dict[str, Consumer] = {}
        self.unacked: OrderedDict[int, Unacked] = OrderedDict()
        self._next_tag = 1
        self._delivery_marks = DeliveryMarks()
        self.prefetch_count = 0  # for consumers created after basic.qos(global=false)
        self.global_prefetch = 0  # basic.qos(global=true): all consumers of the channel together
        self.credit_pool: CreditPool | None = None  # what that limit leaves, drawn on by the queues
        self.flow_active = True
        self.confirming = False
        self._publish_seq = 0
        # Message counters for the management API's message_stats (broker/stats.py), plain ints sampled on a
        # timer; deliveries and gets are the delivery tags handed out (`delivered`).
        self.published = 0
        self.acked = 0
        self.confirmed = 0
        self.redelivered = 0
        # Confirms owed, in publish order: (seq, store position it waits for, nack?). Its own deque from
        # confirm.select on; until then the shared one that holds nothing (publishes have no seq).
        self._unconfirmed: deque[tuple[int, int, bool]] = _NO_CONFIRMS
        self.tx: _Transaction | None = None
        self.last_queue = ""  # "" in queue arguments means the channel's last declared queue
        self.closed = False
        self.reply_token: str | None = None  # set while a direct reply-to consumer is active
        self._may_publish_to: set[str] = set()

    # ---- dispatch ---------------------------------------------------------------------------

    def handle_method(self, method: Any) -> None:
        handler = _HANDLERS.get(type(method))
        if handler is None:
            for cls, candidate in _HANDLERS.items():
                if isinstance(method, cls):
                    handler = candidate
                    break
            else:
                # Methods only a server sends, and replies to requests it never made.
                raise ConnectionLevelError(COMMAND_INVALID, "unimplemented method")
        handler(self, method)

    def _reply(self, method_class: type, **fields: Any) -> None:
        self.conn.send_method(self.number, build(method_class, **fields))

    # ---- delivery (called by queues) --------------------------------------------------------

    def deliver(self, consumer: Consumer, entry: Entry) -> None:
        tag = self._next_tag
        self._next_tag = tag + 1
        queue = consumer.queue
        queue.delivered += 1
        if not consumer.no_ack:
            consumer.unacked += 1
            self.unacked[tag] = (entry.seq, queue, consumer)
        redelivered = entry.redelivered
        if redelivered:  # counted here, where the flag is read anyway for the frame
            self.redelivered += 1
            queue.redelivered += 1
        message = entry.message
        self.conn.send_frames(
            fastpath.deliver_frames(
                self.number,
                consumer.tag_raw,
                tag,
                redelivered,
                message.names_raw,
                message.properties_raw,
                message.body,
                self.conn.frame_max,
            )
        )
        # The queue drew the delivery's size on session.output; the server counts what stays unsent.
        self.session.wake()

    def unacked_tables(self) -> list[dict[int, Unacked]]:
        """Where this channel keeps its unacked deliveries, by delivery tag: the ones a queue's new
        object takes over when the queue moves (broker/cluster/remote.py, a deposed leader)."""
        return [self.unacked] if self.tx is None else [self.unacked, self.tx.held]

    def ack_timeout(self, now: float) -> ChannelError | None:
        """The error to close the channel with when its oldest unacked delivery has waited too long: the
        consumer timeout of the queue it came from (x-consumer-timeout), else the node's."""
        oldest = next(iter(self.unacked), None)
        waited = self._delivery_marks.tick(now, oldest, self._next_tag)
        if oldest is None:
            return None
        timeout = self.unacked[oldest][1].consumer_timeout
        if timeout is None:
            timeout = self.session.node.config.limits.consumer_timeout
        if timeout and waited * 1000 > timeout:
            return ChannelError(PRECONDITION_FAILED, timeout_text(self.number, timeout))
        return None

    def consumer_cancelled_by_broker(self, consumer: Consumer) -> None:
        """The queue went away: tell the client if it understands basic.cancel from the server."""
        if self.consumers.pop(consumer.tag, None) is None or self.closed:
            return
        if self.conn.client_capability("consumer_cancel_notify"):
            self._reply(Basic.Cancel, consumer_tag=consumer.tag, nowait=True)
            self.session.wake()

    # ---- publishing -------------------------------------------------------------------------

    def publish(self, publish: fastpath.Publish, properties_raw: bytes, body: fastpath.Body) -> None:
        if publish.immediate:
            raise ConnectionLevelError(NOT_IMPLEMENTED, "immediate=true", 60, 40)
        name = publish.exchange
        first_or_topic = name not in self._may_publish_to
        if first_or_topic:
            # RabbitMQ's order: write permission (403) before the exchange's existence (404).
            self.session.check_permission("write", "exchange", name)
            # Permissions are fixed for the connection's life: one regex match per exchange, not per
            # message, unless a topic permission names the exchange (then each routing key is checked).
            if not self.session.has_topic_permission(name):
                self._may_publish_to.add(name)
        exchange = self.vhost.exchanges.get(name)
        if exchange is None:
            exchange = self.vhost.exchange(name, local=True)  # raises the 404
        if exchange.internal:
            raise ChannelError(
                ACCESS_REFUSED,
                f"cannot publish to internal exchange '{exchange.name}' in vhost '{self.vhost.name}'",
            )
        if first_or_topic:
            self.session.check_topic_permission("write", exchange, publish.routing_key)
        try:
            message = Message(
                exchange.name, publish.routing_key, properties_raw, body, publish.names_raw or None
            )
        except PropertiesError as exc:
            raise _malformed_properties(exc) from exc
        flags = properties_raw[0] if properties_raw else 0  # the high byte of the property flags
        if flags & _HEADERS_FLAG:
            try:
                check_headers(properties_raw)
            except TableError as exc:
                # RabbitMQ's channel crashes on such a table (541); Leveret never answers 541 to input.
                raise _malformed_properties(exc) from exc
        if message.user_id is not None and message.user_id != self.session.username:
            raise ChannelError(
                PRECONDITION_FAILED,
                f"user_id property set to '{message.user_id}' but authenticated user was "
                f"'{self.session.username}'",
            )
        if message.expiration is not None:
            check_expiration(message.expiration)
        extra_keys: list[str] = []
        # Reply-to rewriting and CC/BCC need a reply-to or headers property: test their flag bits first.
        if flags & _REPLY_TO_OR_HEADERS:
            try:
                if reply_to.MAGIC_QUEUE_RAW in properties_raw:
                    message = reply_to.rewrite_reply_to(message, self)
                message, extra_keys = split_routing_keys(message)
            except PropertiesError as exc:
                raise _malformed_properties(exc) from exc
        self.published += 1
        seq = 0
        if self.confirming:
            self._publish_seq += 1
            seq = self._publish_seq
        if self.tx is not None:
            self.tx.actions.append(lambda: self._route(exchange, message, extra_keys, publish.mandatory, seq))
            return
        self._route(exchange, message, extra_keys, publish.mandatory, seq)

    def _route(
        self, exchange: Any, message: Message, extra_keys: list[str], mandatory: bool, seq: int
    ) -> None:
        queues: list[BrokerQueue]
        # message_stats (broker/stats.py): the inlined default exchange counts one int per publish.
        exchange.published_in += 1
        if exchange.name != DEFAULT_EXCHANGE or extra_keys:
            try:
                queues = self.vhost.route(exchange, message, extra_keys)
            except PropertiesError as exc:  # a headers or consistent-hash exchange read them
                raise _malformed_properties(exc) from exc
            exchange.routed_in += 1
            exchange.routed_out += len(queues)
            delivered = bool(queues)
        elif message.routing_key.startswith(reply_to.PREFIX):
            delivered = reply_to.deliver(self.session.node, message)
            queues = []
            exchange.missed_inline += 1  # to no queue
        else:
            # The default exchange, inlined (vhost.route's first case): the queue named by the key.
            queue = self.vhost.queues.get(message.routing_key)
            if queue is not None:
                queues = [queue]
                delivered = True
            else:
                queues = []
                delivered = False
                exchange.missed_inline += 1
        if not delivered and mandatory:
            self.conn.send_frames(
                fastpath.return_frames(
                    self.number,
                    NO_ROUTE,
                    "NO_ROUTE",
                    message.names_raw,
                    message.properties_raw,
                    message.body,
                    self.conn.frame_max,
                )
            )
        position, refused = 0, False
        for queue in queues:
            needed = queue.enqueue(message)
            if needed is None:
                refused = True
            elif needed > position:
                position = needed
        if seq:
            self._unconfirmed.append((seq, position, refused))

    def flush_confirms(self, durable_position: int) -> None:
        """Send the confirms whose messages are safe: runs of acks as one basic.ack(multiple)."""
        pending = self._unconfirmed
        acked_upto = 0
        frames = []
        while pending:
            seq, position, refused = pending[0]
            if not (position <= durable_position or refused):
                # Not safe yet, unless it is a publish to queues led elsewhere that their leaders answered.
                if not isinstance(position, Ticket):
                    break
                outcome = position.outcome(durable_position)
                if outcome is None:
                    break
                refused = not outcome
            pending.popleft()
            if refused:
                if acked_upto:
                    frames.append(fastpath.confirm_ack_frame(self.number, acked_upto, True))
                    acked_upto = 0
                frames.append(fastpath.confirm_nack_frame(self.number, seq, False))
            else:
                acked_upto = seq
                self.confirmed += 1
        if acked_upto:
            frames.append(fastpath.confirm_ack_frame(self.number, acked_upto, True))
        if frames:
            self.conn.send_frames(frames)

    def fail_confirms(self, positions: Container[int]) -> None:
        """The store failed to write these positions: their publishes get basic.nack (a publish also routed
        to queues led elsewhere too, when its local part failed)."""
        self._unconfirmed = deque(
            (seq, position, refused or position in positions or _local_part(position) in positions)
            for seq, position, refused in self._unconfirmed
        )

    @property
    def awaiting_confirms(self) -> bool:
        return bool(self._unconfirmed)

    # ---- acknowledgements -------------------------------------------------------------------

    def _take_unacked(self, delivery_tag: int, multiple: bool) -> list[Unacked]:
        unacked = self.unacked
        if multiple:
            if delivery_tag == 0:
                taken = list(unacked.values())
                unacked.clear()
                return taken
            if delivery_tag >= self._next_tag:
                raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}")
            # Tags are in delivery order: the ones acked are a prefix.
            count = 0
            for tag in unacked:
                if tag > delivery_tag:
                    break
                count += 1
            popitem = unacked.popitem
            taken = [popitem(last=False)[1] for _ in range(count)]
            if not taken:
                raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}")
            return taken
        item = unacked.pop(delivery_tag, None)
        if item is None:
            raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}")
        return [item]

    def _take_tagged(self, delivery_tag: int, multiple: bool) -> list[tuple[int, Unacked]]:
        """`_take_unacked` keeping the tags, for a transaction to give back on rollback (not the hot
        path: a transactional channel's acks only)."""
        unacked = self.unacked
        if multiple and delivery_tag == 0:
            tags = list(unacked)
        elif multiple:
            if delivery_tag >= self._next_tag:
                raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}")
            tags = list(itertools.takewhile(lambda tag: tag <= delivery_tag, unacked))
            if not tags:
                raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}")
        elif delivery_tag in unacked:
            tags = [delivery_tag]
        else:
            raise ChannelError(PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}")
        return [(tag, unacked.pop(tag)) for tag in tags]

    def _ack(self, method: fastpath.Ack) -> None:
        if self.tx is None:
            self._acked(self._take_unacked(method.delivery_tag, method.multiple))
        else:
            self._hold(method.delivery_tag, method.multiple, self._acked)

    def _acked(self, taken: list[Unacked]) -> None:
        self.acked += len(taken)
        self._settle(taken)

    @property
    def delivered(self) -> int:
        """Deliveries and basic.get-oks so far: each took the next delivery tag."""
        return self._next_tag - 1

    def _nack(self, method: fastpath.Nack) -> None:
        if self.tx is None:
            self._dispose(self._take_unacked(method.delivery_tag, method.multiple), method.requeue)
        else:
            requeue = method.requeue
            self._hold(method.delivery_tag, method.multiple, lambda taken: self._dispose(taken, requeue))

    def _reject(self, method: fastpath.Reject) -> None:
        if self.tx is None:
            self._dispose(self._take_unacked(method.delivery_tag, False), method.requeue)
        else:
            self._hold(method.delivery_tag, False, lambda taken: self._dispose(taken, method.requeue))

    def _dispose(self, taken: list[Unacked], requeue: bool) -> None:
        if requeue:
            self._requeue(taken)
        else:
            self._settle(taken, rejected=True)

    def _hold(self, delivery_tag: int, multiple: bool, action: Callable[[list[Unacked]], None]) -> None:
        """An ack, nack or reject in a transaction: its tags are checked (and taken) now, as RabbitMQ
        does, so an unknown tag closes the channel before tx.commit and a commit never fails halfway
        through its publishes; the settlement waits for the commit."""
        assert self.tx is not None
        tagged = self._take_tagged(delivery_tag, multiple)
        held = self.tx.held
        held.update(tagged)
        tags = [tag for tag, _ in tagged]
        self.tx.actions.append(lambda: action([held[tag] for tag in tags]))

    def _unhold(self, held: list[tuple[int, Unacked]]) -> None:
        """Deliveries an uncommitted transaction had settled are unacked again, in tag order."""
        if held:
            merged = sorted([*held, *self.unacked.items()], key=lambda pair: pair[0])
            self.unacked.clear()
            self.unacked.update(merged)

    def _settle(self, taken: Iterable[Unacked], rejected: bool = False) -> None:
        by_queue, consumers = _by_queue(taken)
        for queue, seqs in by_queue:
            if rejected:
                queue.reject(seqs)
            else:
                queue.acked += len(seqs)
                queue.settle(seqs)
        self._credit_returned(consumers, sum(len(seqs) for _, seqs in by_queue))

    def _requeue(self, taken: Iterable[Unacked]) -> None:
        by_queue, consumers = _by_queue(taken)
        for queue, seqs in by_queue:
            queue.requeue(seqs)
        self._credit_returned(consumers, sum(len(seqs) for _, seqs in by_queue))

    def _credit_returned(self, consumers: Iterable[Consumer], count: int) -> None:
        """`count` deliveries are done with: send the queues the credit of consumers that may take more."""
        pool = self.credit_pool
        if pool is not None:
            pool.left += count
            # The channel-wide limit may have held back any of this channel's consumers.
            for queue in {id(c.queue): c.queue for c in self.consumers.values()}.values():
                queue.credit_changed()
        for consumer in consumers:
            consumer.update_credit()

    def _update_all_credit(self) -> None:
        for consumer in list(self.consumers.values()):
            consumer.update_credit()


    # ---- channel ----------------------------------------------------------------------------

    def _flow(self, method: Channel.Flow) -> None:
        if not method.active:
            raise ConnectionLevelError(NOT_IMPLEMENTED, "active=false", 20, 20)  # as RabbitMQ 3.x
        self._reply(Channel.FlowOk, active=True)

    def close(self) -> None:
        """The channel is gone (closed by either side, or with its connection): give back what it held."""
        if self.closed:
            return
        self.closed = True
        # As RabbitMQ does: unacked messages go back first (while this channel takes no more), so that
        # the consumers that remain (or the next single active one) get them before what was behind.
        self.flow_active = False
        self._update_all_credit()
        if self.tx is not None:
            self._unhold(self.tx.take_held())  # uncommitted acks are void
            self.tx = None
        taken = list(self.unacked.values())
        self.unacked.clear()
        self._requeue(taken)
        for consumer in list(self.consumers.values()):
            self._remove_consumer(consumer)
        self.consumers.clear()
        reply_to.forget_channel(self.session.node, self)
        self.session.node.message_totals.channel_closed(self)
        self.session.node.memory_release.note_closed()

    # ---- exchanges --------------------------------------------------------------------------

    def _exchange_declare(self, method: Exchange.Declare) -> None:
        name = method.exchange
        if method.passive:
            check_not_default_exchange(name)
            self.vhost.exchange(name)
        else:
            exchange_class(method.exchange_type)  # unknown type: connection error, before any other check
            check_not_default_exchange(name)
            self.session.check_permission("configure", "exchange", name)
            if name not in self.vhost.exchanges:
                self._check_alternate_exchange(name, method.arguments or {})
            self.vhost.declare_exchange(
                name,
                method.exchange_type,
                durable=method.durable,
                auto_delete=method.auto_delete,
                internal=method.internal,
                arguments=method.arguments or {},
            )
        if not method.nowait:
            self._reply(Exchange.DeclareOk)

    def _check_alternate_exchange(self, name: str, arguments: dict[str, Any]) -> None:
        """A new exchange with an alternate exchange publishes into it: RabbitMQ asks for read on the
        exchange and write on its alternate (rabbit_channel, exchange.declare)."""
        alternate = arguments.get("alternate-exchange")
        if alternate is None:
            return
        if isinstance(alternate, bytes):
            alternate = alternate.decode("utf-8", "replace")
        if not isinstance(alternate, str):
            raise ChannelError(
                PRECONDITION_FAILED,
                f"invalid type '{amqp_type(alternate)}' for arg 'alternate-exchange' in exchange '{name}' "
                f"in vhost '{self.vhost.name}'",
            )
        self.session.check_permission("read", "exchange", name)
        self.session.check_permission("write", "exchange", alternate)

    def _exchange_delete(self, method: Exchange.Delete) -> None:
        check_not_default_exchange(method.exchange)
        self.session.check_permission("configure", "exchange", method.exchange)
        self.vhost.delete_exchange(method.exchange, if_unused=method.if_unused)
        if not method.nowait:
            self._reply(Exchange.DeleteOk)

    def _exchange_bind(self, method: Exchange.Bind) -> None:
        source, destination = self._exchange_pair(method.source, method.destination, method.routing_key)
        self.vhost.bind(source, destination, method.routing_key, method.arguments or {})
        if not method.nowait:
            self._reply(Exchange.BindOk)

    def _exchange_unbind(self, method: Exchange.Unbind) -> None:
        # RabbitMQ answers unbind-ok when the binding, or either end, does not exist.
        self.session.check_permission("write", "exchange", method.destination)
        self.session.check_permission("read", "exchange", method.source)
        source = self.vhost.exchanges.get(method.source)
        destination = self.vhost.exchanges.get(method.destination)
        if source is not None:
            self.session.check_topic_permission("read", source, method.routing_key)
        if source is not None and destination is not None:
            self.vhost.unbind(source, destination, method.routing_key, method.arguments or {})
        if not method.nowait:
            self._reply(Exchange.UnbindOk)

    def _exchange_pair(self, source_name: str, destination_name: str, routing_key: str) -> tuple[Any, Any]:
        self.session.check_permission("write", "exchange", destination_name)
        self.session.check_permission("read", "exchange", source_name)
        destination = self.vhost.exchange(destination_name)
        source = self.vhost.exchange(source_name)
        for exchange in (source, destination):
            if exchange.name == DEFAULT_EXCHANGE:
                raise ChannelError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        self.session.check_topic_permission("read", source, routing_key)
        return source, destination

    # ---- queues -----------------------------------------------------------------------------

    def _queue_name(self, name: str) -> str:
        if name:
            return name
        if not self.last_queue:
            raise ChannelError(NOT_FOUND, "no previously declared queue")
        return self.last_queue

    def _owned_queue(self, name: str) -> BrokerQueue:
        queue = self.vhost.queue(self._queue_name(name))
        self.vhost.check_exclusive_access(queue, self.session)
        return queue

    def _queue_declare(self, method: Queue.Declare) -> None:
        name = method.queue
        if name == reply_to.MAGIC_QUEUE:
            self._reply(Queue.DeclareOk, queue=name, message_count=0, consumer_count=0)
            return
        if method.passive:
            queue = self._owned_queue(name)
        else:
            # A server-named queue's name is chosen first: permissions are checked on it, as in RabbitMQ.
            server_named = not name
            if server_named:
                check_server_named_allowed(method.arguments or {})
            # (In a cluster, the same name again when the declare is handled again after its etcd change.)
            name = name or self.vhost.metadata.server_name() or server_named_queue()
            self.session.check_permission("configure", "queue", name)
            if name not in self.vhost.queues:
                self._check_dead_letter_exchange(name, method.arguments or {})
            queue = self.vhost.declare_queue(
                name,
                owner=self.session,
                durable=method.durable,
                exclusive=method.exclusive,
                auto_delete=method.auto_delete,
                arguments=method.arguments or {},
                server_named=server_named,
            )
        queue.touch()
        self.last_queue = queue.name
        if not method.nowait:
            if isinstance(queue, ProxyQueue):  # the counts are the leader's
                counts = self._ask_leader(queue, remote_codec.COUNTS)
                message_count, consumer_count = counts.message_count, counts.consumer_count
                queue.known_counts = (message_count, consumer_count, counts.unacked)
            else:
                message_count, consumer_count = queue.message_count, queue.consumer_count
            self._reply(
                Queue.DeclareOk, queue=queue.name, message_count=message_count, consumer_count=consumer_count
            )

    def _check_dead_letter_exchange(self, name: str, arguments: dict[str, Any]) -> None:
        """A new queue with a dead-letter exchange publishes into it: RabbitMQ asks for read on the queue
        and write on the exchange (rabbit_channel, queue.declare). A value of the wrong type is refused
        by the arguments' validation."""
        dead_letter_exchange = arguments.get("x-dead-letter-exchange")
        if isinstance(dead_letter_exchange, bytes):
            dead_letter_exchange = dead_letter_exchange.decode("utf-8", "replace")
        if isinstance(dead_letter_exchange, str):
            self.session.check_permission("read", "queue", name)
            self.session.check_permission("write", "exchange", dead_letter_exchange)

    def _queue_bind(self, method: Queue.Bind) -> None:
        queue, exchange = self._queue_and_exchange(method.queue, method.exchange, method.routing_key)
        self.vhost.bind(exchange, queue, method.routing_key, method.arguments or {})
        if not method.nowait:
            self._reply(Queue.BindOk)

    def _queue_unbind(self, method: Queue.Unbind) -> None:
        # RabbitMQ answers unbind-ok when the binding, the queue or the exchange does not exist.
        name = self._queue_name(method.queue)
        self.session.check_permission("write", "queue", name)
        self.session.check_permission("read", "exchange", method.exchange)
        queue = self.vhost.queues.get(name)
        exchange = self.vhost.exchanges.get(method.exchange)
        if method.exchange == DEFAULT_EXCHANGE:
            raise ChannelError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        if exchange is not None:
            self.session.check_topic_permission("read", exchange, method.routing_key)
        if queue is not None and exchange is not None:
            self.vhost.check_exclusive_access(queue, self.session)
            self.vhost.unbind(exchange, queue, method.routing_key, method.arguments or {})
        self._reply(Queue.UnbindOk)

    def _queue_and_exchange(
        self, queue_name: str, exchange_name: str, routing_key: str
    ) -> tuple[BrokerQueue, Any]:
        queue_name = self._queue_name(queue_name)
        self.session.check_permission("write", "queue", queue_name)
        self.session.check_permission("read", "exchange", exchange_name)
        queue = self._owned_queue(queue_name)
        exchange = self.vhost.exchange(exchange_name)
        if exchange.name == DEFAULT_EXCHANGE:
            raise ChannelError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        self.session.check_topic_permission("read", exchange, routing_key)
        return queue, exchange

    def _queue_purge(self, method: Queue.Purge) -> None:
        queue = self._owned_queue(method.queue)
        self.session.check_permission("read", "queue", queue.name)
        if isinstance(queue, ProxyQueue) or isinstance(queue.journal, ReplicatedJournal):
            # Led here or elsewhere, purge-ok waits until the queue's log holds the purge as a confirm would.
            count = self._leader_answer(
                remote_codec.Call(self.vhost.name, queue.name, remote_codec.PURGE)
            ).message_count
        else:
            count = queue.purge()
        if not method.nowait:
            self._reply(Queue.PurgeOk, message_count=count)

    def _queue_delete(self, method: Queue.Delete) -> None:
        name = self._queue_name(method.queue)
        self.session.check_permission("configure", "queue", name)
        queue = self.vhost.queues.get(name)
        count = 0
        flags = (remote_codec.IF_UNUSED if method.if_unused else 0) | (
            remote_codec.IF_EMPTY if method.if_empty else 0
        )
        call = remote_codec.Call(self.vhost.name, name, remote_codec.DELETE, flags)
        # A queue led elsewhere: its leader checks the conditions and counts. (Handled again after etcd
        # deleted the record, the queue may be gone already: this node's watch was quicker.)
        if isinstance(queue, ProxyQueue) or self.session.known_answer(call) is not None:
            count = self._leader_answer(call).message_count
            if queue is not None:
                self.vhost.delete_queue(queue)
        elif queue is not None:
            self.vhost.check_exclusive_access(queue, self.session)
            count = self.vhost.delete_queue(queue, if_unused=method.if_unused, if_empty=method.if_empty)
        if not method.nowait:
            self._reply(Queue.DeleteOk, message_count=count)

    # ---- consumers --------------------------------------------------------------------------

    def _qos(self, method: Basic.Qos) -> None:
        if method.prefetch_size:
            raise ConnectionLevelError(NOT_IMPLEMENTED, f"prefetch_size!=0 ({method.prefetch_size})", 60, 10)
        if method.global_:
            self.global_prefetch = limit = method.prefetch_count
            self.credit_pool = CreditPool(limit - len(self.unacked)) if limit else None
            for consumer in self.consumers.values():
                consumer.pool = None if consumer.no_ack else self.credit_pool
        else:
            self.prefetch_count = method.prefetch_count
        self._reply(Basic.QosOk)
        self._update_all_credit()

    def _consume(self, method: Basic.Consume) -> None:
        tag = method.consumer_tag or "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip(
            "="
        )
        if tag in self.consumers:
            raise ConnectionLevelError(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", 60, 20)
        if method.queue == reply_to.MAGIC_QUEUE:
            reply_to.start_consumer(self.session.node, self, tag, no_ack=method.no_ack)
            if not method.nowait:
                self._reply(Basic.ConsumeOk, consumer_tag=tag)
            return
        queue = self._owned_queue(method.queue)
        self.session.check_permission("read", "queue", queue.name)
        validate_consumer_arguments(queue.name, self.vhost.name, method.arguments or {})
        if queue.exclusive_use(method.exclusive):
            raise ChannelError(
                ACCESS_REFUSED, f"queue '{queue.name}' in vhost '{self.vhost.name}' in exclusive use"
            )
        kind = queue_type(queue.arguments)
        if self.global_prefetch and kind != "classic":
            # RabbitMQ's quorum and stream queues cannot share a channel-wide prefetch (a connection error).
            text = f"queue '{queue.name}' in vhost '{self.vhost.name}' does not support global qos"
            raise ConnectionLevelError(NOT_IMPLEMENTED, text, 60, 20)
        if isinstance(queue, ProxyQueue) and kind == "classic":
            # Only the leader knows every node's consumers: consume-ok (or its 403) once it answered, as
            # RabbitMQ's queue process answers. Quorum and stream queues ignore the exclusive flag: theirs
            # go at once.
            # A yes keeps the consumer's place at the leader (its id) until its registration arrives.
            flags = remote_codec.CALL_EXCLUSIVE if method.exclusive else 0
            cid = self.session.consumer_cid()
            self._leader_answer(remote_codec.Call(self.vhost.name, queue.name, remote_codec.CONSUMABLE,
                                                  flags, cid))
        else:
            cid = 0
        consumer = Consumer(
            tag,
            queue,
            self,
            no_ack=method.no_ack,
            exclusive=method.exclusive,
            prefetch=self.prefetch_count,
            arguments=method.arguments or {},
        )
        self.consumers[tag] = consumer
        if not method.nowait:
            self._reply(Basic.ConsumeOk, consumer_tag=tag)
        if isinstance(queue, ProxyQueue):
            queue.add_consumer(consumer, cid)
        else:
            queue.add_consumer(consumer)

    def _cancel(self, method: Basic.Cancel) -> None:
        tag = method.consumer_tag or ""
        consumer = self.consumers.pop(tag, None)
        if consumer is not None:
            self._remove_consumer(consumer)
            if isinstance(consumer.queue, ProxyQueue) and not method.nowait:
                # cancel-ok once the leader has taken the cancel (this call follows it on the link), as
                # RabbitMQ answers once the queue removed the consumer: every node's count agrees then.
                # Handled again with the answer, the consumer is gone already.
                self._ask_leader(consumer.queue, remote_codec.COUNTS)
        else:
            reply_to.cancel_consumer(self.session.node, self, tag)
        if not method.nowait:
            self._reply(Basic.CancelOk, consumer_tag=method.consumer_tag)

    def _remove_consumer(self, consumer: Consumer) -> None:
        queue = consumer.queue
        queue.remove_consumer(consumer)
        # A queue led elsewhere is auto-deleted by its leader, which sees every node's consumers.
        if queue.auto_delete and not queue.consumers and not queue.deleted and not is_proxy(queue):
            self.vhost.remove_queue(queue)

    def _get(self, method: Basic.Get) -> None:
        queue = self._owned_queue(method.queue)
        self.session.check_permission("read", "queue", queue.name)
        if isinstance(queue, ProxyQueue):
            self._get_from_leader(queue, method.no_ack)
            return
        entry = queue.take(self)
        if entry is None:
            self._reply(Basic.GetEmpty)
            return
        if isinstance(entry, HeadLoading):
            raise HeadPending
        if method.no_ack:
            queue.settle([entry.seq])
        self._got(queue, entry, method.no_ack, queue.message_count)

    def head_ready(self, queue: BrokerQueue) -> None:
        """HEAD_READY (as a queue's getter): the head this channel's held basic.get waits for is back."""
        self.session.head_ready()

    def _get_from_leader(self, queue: ProxyQueue, no_ack: bool) -> None:
        result = self._ask_leader(queue, remote_codec.GET, remote_codec.CALL_NO_ACK if no_ack else 0)
        if result.message is None:
            self._reply(Basic.GetEmpty)
            return
        entry = queue.received(result.node, result.generation, result.seq, result.message,
                               result.redelivered, not no_ack)
        self._got(queue, entry, no_ack, result.message_count)

    def _ask_leader(self, queue: ProxyQueue, what: int, flags: int = 0) -> remote_codec.CallResult:
        return self._leader_answer(remote_codec.Call(self.vhost.name, queue.name, what, flags))

    def _leader_answer(self, call: remote_codec.Call) -> remote_codec.CallResult:
        """The leader's answer to a call about a queue it leads (the method is held until it comes, then
        handled again: see ConnectionSession.remote_answer); its AMQP error is this method's."""
        result = self.session.remote_answer(call)
        if result.error_code:
            raise ChannelError(result.error_code, result.error_text)
        return result

    def _got(self, queue: BrokerQueue, entry: Entry, no_ack: bool, message_count: int) -> None:
        tag = self._next_tag
        self._next_tag = tag + 1
        queue.delivered += 1
        if entry.redelivered:
            self.redelivered += 1
            queue.redelivered += 1
        if not no_ack:
            self.unacked[tag] = (entry.seq, queue, None)
            if self.credit_pool is not None:
                self.credit_pool.left -= 1
        message = entry.message
        self.conn.send_frames(
            fastpath.get_ok_frames(
                self.number,
                tag,
                entry.redelivered,
                message.names_raw,
                message_count,
                message.properties_raw,
                message.body,
                self.conn.frame_max,
            )
        )

    def _recover(self, method: Basic.Recover) -> None:
        if not method.requeue:
            # RabbitMQ never implemented redelivery to the original consumer.
            raise ConnectionLevelError(NOT_IMPLEMENTED, "requeue=false")
        taken = list(self.unacked.values())
        self.unacked.clear()
        self._requeue(taken)
        if isinstance(method, Basic.Recover):
            self._reply(Basic.RecoverOk)

    # ---- confirms and transactions ----------------------------------------------------------

    def _confirm_select(self, method: Confirm.Select) -> None:
        if self.tx is not None:
            raise ChannelError(PRECONDITION_FAILED, "cannot switch from tx to confirm mode", 85, 10)
        if not self.confirming:
            self._unconfirmed = deque()
        self.confirming = True
        if not method.nowait:
            self._reply(Confirm.SelectOk)

    def _tx_select(self, method: Tx.Select) -> None:
        if self.confirming:
            raise ChannelError(PRECONDITION_FAILED, "cannot switch from confirm to tx mode", 90, 10)
        if self.tx is None:
            self.tx = _Transaction()
        self._reply(Tx.SelectOk)

    def _tx_commit(self, method: Tx.Commit) -> None:
        if self.tx is None:
            raise ChannelError(PRECONDITION_FAILED, "channel is not transactional", 90, 20)
        actions, self.tx.actions = self.tx.actions, []
        self.tx.take_held()
        tx, self.tx = self.tx, None  # run the actions as a non-transactional channel would
        try:
            for action in actions:
                action()
        finally:
            self.tx = tx
        self._reply(Tx.CommitOk)

    def _tx_rollback(self, method: Tx.Rollback) -> None:
        if self.tx is None:
            raise ChannelError(PRECONDITION_FAILED, "channel is not transactional", 90, 30)
        self.tx.actions.clear()
        self._unhold(self.tx.take_held())
        self._reply(Tx.RollbackOk)

# Method class -> handler, shared by every channel: a table per channel cost about 2.5 KB of bound methods
# and a dict each, kept as long as the channel and left behind in the allocator's arenas after it.
_HANDLERS: dict[type, Callable[[ChannelSession, Any], None]] = {
    Channel.Flow: ChannelSession._flow,
    Exchange.Declare: ChannelSession._exchange_declare,
    Exchange.Delete: ChannelSession._exchange_delete,
    Exchange.Bind: ChannelSession._exchange_bind,
    Exchange.Unbind: ChannelSession._exchange_unbind,
    Queue.Declare: ChannelSession._queue_declare,
    Queue.Bind: ChannelSession._queue_bind,
    Queue.Unbind: ChannelSession._queue_unbind,
    Queue.Purge: ChannelSession._queue_purge,
    Queue.Delete: ChannelSession._queue_delete,
    Basic.Qos: ChannelSession._qos,
    Basic.Consume: ChannelSession._consume,
    Basic.Cancel: ChannelSession._cancel,
    Basic.Get: ChannelSession._get,
    Basic.Recover: ChannelSession._recover,
    Basic.RecoverAsync: ChannelSession._recover,
    fastpath.Ack: ChannelSession._ack,
    fastpath.Nack: ChannelSession._nack,
    fastpath.Reject: ChannelSession._reject,
    Confirm.Select: ChannelSession._confirm_select,
    Tx.Select: ChannelSession._tx_select,
    Tx.Commit: ChannelSession._tx_commit,
    Tx.Rollback: ChannelSession._tx_rollback,
}



def _local_part(position: int) -> int:
    """The store position (or gate ticket) a publish waits for on this node: a `Ticket`'s own, if any."""
    return position.local if isinstance(position, Ticket) and position.local else -1


def _malformed_properties(error: PropertiesError | TableError) -> ConnectionLevelError:
    """A publish whose content properties cannot be read, found when they are first needed."""
    return ConnectionLevelError(SYNTAX_ERROR, str(error), 60, 40)


def _by_queue(taken: Iterable[Unacked]) -> tuple[list[tuple[BrokerQueue, list[int]]], list[Consumer]]:
    """Deliveries' seqs grouped by the queue they came from, and the consumers they came through (each
    gets its prefetch back)."""
    groups: dict[int, tuple[BrokerQueue, list[int]]] = {}
    consumers: dict[int, Consumer] = {}
    last_queue, seqs = None, []
    last_consumer = None
    for seq, queue, consumer in taken:
        if consumer is not None:
            consumer.unacked -= 1
            if consumer is not last_consumer:
                last_consumer = consumers[id(consumer)] = consumer
        if queue is not last_queue:  # runs from one queue are the usual case: one lookup per run
            last_queue = queue
            seqs = groups.setdefault(id(queue), (queue, []))[1]
        seqs.append(seq)
    return list(groups.values()), list(consumers.values())
