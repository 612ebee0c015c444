"""One client connection seen by the broker: the handshake's decisions, its channels, its errors.

Raise deep, answer once: handlers raise ChannelError / ConnectionLevelError, and `handle_event`
turns them into channel.close or connection.close. Anything else is a bug in Leveret: it is logged
and answered with 541 INTERNAL_ERROR on this connection only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pamqp.commands import Channel

from leveret.amqp.codec import build, method_ids
from leveret.amqp.connection import ServerConnection, State
from leveret.amqp.constants import INTERNAL_ERROR, NOT_ALLOWED
from leveret.amqp.errors import AMQPError, ChannelError, ConnectionLevelError
from leveret.amqp.events import (
    ChannelCloseOk,
    ChannelFailed,
    ConnectionClosed,
    ConnectionOpened,
    ContentReceived,
    Event,
    MethodReceived,
)
from leveret.amqp.handshake import EXTERNAL
from leveret.broker.auth import VhostPermissions, certificate_login_name
from leveret.broker.cluster.hooks import ClusterPending
from leveret.broker.cluster.remote_codec import CALL_NO_ACK, LED_HERE, Call, CallResult
from leveret.broker.exchanges.base import Exchange
from leveret.broker.queues.subscriber import CreditPool
from leveret.broker.session import client_log
from leveret.broker.session.channel import ChannelSession, HeadPending
from leveret.broker.session.output import OUTBOX_HIGH_WATER, OUTBOX_LOW_WATER
from leveret.broker.session.throttle import PublisherThrottle
from leveret.broker.vhost import VirtualHost

if TYPE_CHECKING:
    from leveret.broker.session.services import NodeServices

log = logging.getLogger(__name__)

UNEXPECTED_CLOSE = "client unexpectedly closed TCP connection"

class _Policy:
    """The handshake's questions, answered by the node for this peer."""

    def __init__(self, session: ConnectionSession) -> None:
        self.session = session

    def mechanisms(self) -> tuple[str, ...]:
        offered = self.session.node.config.auth_mechanisms
        # As rabbitmq_auth_mechanism_ssl, EXTERNAL only on TLS connections.
        return offered if self.session.tls else tuple(m for m in offered if m != EXTERNAL)

    def external_username(self) -> str | None:
        config = self.session.node.config
        if config.tls is None or config.tls.verify != "verify_peer":
            log.warning("EXTERNAL login from %s refused: TLS peer verification is off (tls.verify is not "
                        "verify_peer)", self.session.peer)
            return None
        certificate = self.session.peer_certificate()
        if certificate is None:
            log.info("EXTERNAL login from %s refused: no client certificate", self.session.peer)
            return None
        name = certificate_login_name(certificate, config.ssl_cert_login_from)
        if name is None:
            log.info("EXTERNAL login from %s refused: no name in its certificate", self.session.peer)
        return name

    def authenticate(self, mechanism: str, username: str, password: str) -> bool:
        session = self.session
        client_log.started(session)
        proof = None if mechanism == EXTERNAL else password  # EXTERNAL: the verified certificate
        refusal = session.node.authority.refusal(username, proof, from_loopback=session.from_loopback)
        if refusal is not None:
            # The client is told only to see the log ("Login was refused ... see the broker logfile").
            client_log.login_refused(session, mechanism, refusal)
            session.refusal_logged = True
        return refusal is None

    def check_vhost(self, username: str, vhost: str) -> None:
        node = self.session.node
        self.session.permissions = node.authority.vhost_permissions(username, vhost)
        node.check_connection_limit(username, vhost)
        node.check_user_connection_limit(username)
        limit = node.config.limits.max_connections
        if limit is not None and len(node.connections) >= limit:
            raise ConnectionLevelError(
                NOT_ALLOWED, f"connection refused: node connection limit ({limit}) is reached"
            )


class ConnectionSession:
    def __init__(self, node: NodeServices, peer: str, *, from_loopback: bool) -> None:
        self.node = node
        self.peer = peer
        self.from_loopback = from_loopback
        # For the management API: the broker's end of the socket ("host:port"), TLS or not, and when
        # the client connected (milliseconds since the epoch, RabbitMQ's connected_at).
        self.local = ""
        self.tls = False
        # The client certificate (DER) of a TLS connection, once its handshake is done; the server sets it.
        self.peer_certificate: Callable[[], bytes | None] = lambda: None
        self.connected_at = int(time.time() * 1000)
        self.conn = ServerConnection(node.server_settings, _Policy(self))
        self.permissions: VhostPermissions | None = None
        self.vhost: VirtualHost = None  # type: ignore[assignment]  # set on connection.open
        self.channels: dict[int, ChannelSession] = {}
        self.wake: Callable[[], None] = lambda: None  # the server sets this: "you have bytes to send"
        # Bytes queued or being written, not yet taken by the socket: deliveries counted (about) as they
        # are queued, and what the server still holds after a write (`output_left`). Past
        # OUTBOX_HIGH_WATER the consumers stop until the server reports it drained: `output` is what
        # they may still be handed, which their queues draw on per delivery.
        self.unsent = 0
        self.output = CreditPool(OUTBOX_HIGH_WATER)
        self.finished = False
        self.throttle = PublisherThrottle(self.conn)
        # The method held until etcd has done the change it needs (see broker/cluster/hooks.py), a leader
        # answered, or the queue head a basic.get needs was read back from disk (HeadPending).
        self.waiting: Event | None = None
        self._head_wait: Event | None = None  # a basic.get held until its queue's head is read back
        self.cluster_resumed: Callable[[], None] = lambda: None  # the server's reader waits for this
        # While a method is held: the answers of leaders of queues led elsewhere, and the etcd change it
        # went through, for when it is handled again.
        self._answers: dict[Call, CallResult] = {}
        self._replayed: Any = None
        self._consumer_cid = 0  # the held basic.consume's consumer id (see `consumer_cid`)
        # For the client log: whether the client sent anything, how the socket went, a login refusal
        # already logged with its reason.
        self.received_any = False
        self.refusal_logged = False
        self._lost: tuple[State, str | None] | None = None

    @property
    def writable(self) -> bool:
        """Whether the connection's consumers may take messages (its output is within its bound)."""
        return self.output.left > 0

    @property
    def username(self) -> str:
        return self.conn.username

    def check_permission(self, action: str, kind: str, name: str) -> None:
        assert self.permissions is not None
        self.permissions.check(self.username, self.vhost.name, action, kind, name)

    def check_topic_permission(self, action: str, exchange: Exchange, routing_key: str) -> None:
        """Topic permissions apply to topic exchanges only, as in RabbitMQ."""
        assert self.permissions is not None
        if exchange.kind == "topic":
            self.permissions.check_topic(self.username, self.vhost.name, action, exchange.name, routing_key)

    def has_topic_permission(self, exchange: str) -> bool:
        """Whether a topic permission names this exchange (so its publishes are checked one by one)."""
        assert self.permissions is not None
        return exchange in self.permissions.topics

    # ---- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Handle everything in `data` (up to a publish a resource alarm blocks); what to send accumulates
        in `conn`."""
        self.conn.receive_data(data)
        self._handle_input()

    def resume_input(self) -> None:
        """Unblocked: handle the publish the alarm held back, then what arrived after it."""
        held, self.throttle.held = self.throttle.held, None
        if held is not None:
            self.handle_event(held)
        self._handle_input()

    def _handle_input(self) -> None:
        throttle, conn, channels, alarms = self.throttle, self.conn, self.channels, self.node.alarms
        next_publish, next_other_event = conn.next_publish, conn.next_other_event
        if self.waiting is not None:
            return  # waiting for the cluster: what was received stays buffered until then
        # Blocked, what was received stays buffered until the alarms clear.
        while not throttle.blocked:
            # Most events are publishes on an open channel: straight to the channel, no event object.
            fast = next_publish()
            if fast is not None and not alarms.active:
                channel = channels.get(fast[0])
                if channel is not None and not channel.closed:
                    try:
                        channel.publish(fast[1], fast[2], fast[3])
                    except Exception as error:
                        self._failed(ContentReceived(*fast), error)
                continue
            event = ContentReceived(*fast) if fast is not None else next_other_event()
            if event is None:
                break
            self.handle_event(event)
            if self.waiting is not None:
                break
        self.flush_confirms()

    def accepted(self) -> None:
        """The client's first bytes arrived (a port probe that sends nothing is not worth a log line)."""
        self.received_any = True
        client_log.accepted(self)

    def connection_lost(self, reason: str | None = None) -> None:
        """The socket is gone: closed or reset by the client, or dropped by the server for `reason`
        (missed heartbeats, the handshake timeout)."""
        if not self.finished:
            self._lost = (self.conn.state, reason)
        for event in self.conn.connection_lost():
            self.handle_event(event)
        self._finish()

    def handle_event(self, event: Event) -> None:
        try:
            self._dispatch(event)
        except ClusterPending as pending:
            self._wait_for_cluster(event, pending.change)
            return
        except HeadPending:
            self.waiting = self._head_wait = event
            return
        except Exception as error:
            self._failed(event, error)
        if self._answers or self._replayed is not None or self._consumer_cid:
            self._method_done()

    def _method_done(self) -> None:
        """The held method is done: its answers are not a later method's."""
        if self._answers:
            assert self.node.cluster is not None
            for call, answer in self._answers.items():
                self.node.cluster.remote.call_done(call, answer)
            self._answers.clear()
        self._replayed = None
        self._consumer_cid = 0

    def remote_answer(self, call: Call) -> CallResult:
        """The leader's answer to `call` if it came while this method was held; else hold the method."""
        answer = self._answers.get(call)
        if answer is None:
            raise ClusterPending(call)
        return answer

    def consumer_cid(self) -> int:
        """The id of the consumer a basic.consume on a queue led elsewhere asks its leader about: the
        same each time the method is handled again, so that its call (and the leader's answer) is."""
        if not self._consumer_cid:
            assert self.node.cluster is not None
            self._consumer_cid = self.node.cluster.remote.new_cid()
        return self._consumer_cid

    def known_answer(self, call: Call) -> CallResult | None:
        return self._answers.get(call)

    def _wait_for_cluster(self, event: Event, change: Any) -> None:
        """Hold `event`, and everything after it on this connection, until etcd has done `change` (or the
        leader of a queue led elsewhere answered the call `change`)."""
        assert self.node.cluster is not None
        self.waiting = event
        if isinstance(change, Call):
            self.node.cluster.call_leader(change, lambda answer: self._answered(event, change, answer))
            return
        self.node.cluster.metadata.submit(change, lambda done: self._cluster_done(event, done))

    def _answered(self, event: Event, call: Call, answer: CallResult) -> None:
        """The leader answered: handle the held method again, with the answer (and the etcd change it had
        already waited for, if any), then what came after it."""
        if self.finished or self.conn.closed:
            self.waiting = None
            self.cluster_resumed()
            assert self.node.cluster is not None
            if answer.seq and not call.flags & CALL_NO_ACK:  # a basic.get nobody will settle
                self.node.cluster.remote.unclaimed(call, answer)
            self.node.cluster.remote.call_done(call, answer)
            self._consumer_cid = 0
            return
        self.waiting = None
        if answer.error_code != LED_HERE:  # else the queue is led here now: the method finds it
            self._answers[call] = answer
        assert self.node.cluster is not None
        if self._replayed is not None:
            with self.node.cluster.metadata.replay(self._replayed):
                self.handle_event(event)
        else:
            self.handle_event(event)
        self._resume()

    def head_ready(self) -> None:
        """The queue head a held basic.get waited for is in memory: handle the get again (it may wait
        again), then what came after it."""
        event, self._head_wait = self._head_wait, None
        if event is None or self.waiting is not event:
            return  # told twice, or the connection went meanwhile
        self.waiting = None
        if self.finished or self.conn.closed:
            self.cluster_resumed()
            return
        self.handle_event(event)
        self._resume()

    def _cluster_done(self, event: Event, change: Any) -> None:
        """The change is done (or failed): handle the held method again, then what came after it."""
        if self.finished or self.conn.closed:
            self.waiting = None
            self.cluster_resumed()
            return
        self.waiting = None
        assert self.node.cluster is not None
        if change.error is not None:
            error = ConnectionLevelError(
                INTERNAL_ERROR, f"cluster metadata store unavailable ({change.error})"
            )
            self._failed(event, error)
        else:
            self._replayed = change
            with self.node.cluster.metadata.replay(change):
                self.handle_event(event)
        self._resume()

    def _resume(self) -> None:
        if self.waiting is None:
            self._handle_input()
            self.cluster_resumed()
        self.wake()

    def _failed(self, event: Event, error: Exception) -> None:
        """Answer an error raised while handling `event`: close its channel or the connection."""
        # Not `or`: a pamqp method without arguments (channel.close-ok) is falsy.
        method: Any = getattr(event, "method", None)
        if method is None:
            method = getattr(event, "publish", None)
        if isinstance(error, ChannelError):
            self._fill_method_ids(error, method)
            self._close_channel(getattr(event, "channel", 0), error)
        elif isinstance(error, ConnectionLevelError):
            self._fill_method_ids(error, method)
            self.close(error, channel=getattr(event, "channel", 0))
        else:
            log.error("internal error handling %r from %s", event, self.peer, exc_info=error)
            self.close(ConnectionLevelError(INTERNAL_ERROR, "internal error"))

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, ContentReceived):
            if self.node.alarms.active and self.throttle.hold(event, self.node.alarms.active):
                return
            channel = self.channels.get(event.channel)
            if channel is not None and not channel.closed:
                channel.publish(event.publish, event.properties_raw, event.body)
        elif isinstance(event, MethodReceived):
            self._method(event.channel, event.method)
        elif isinstance(event, ChannelFailed):
            client_log.channel_error(self, event.channel, event.error)
            self._drop_channel(event.channel)
        elif isinstance(event, ChannelCloseOk):
            pass  # the channel was dropped when the broker closed it
        elif isinstance(event, ConnectionOpened):
            self.vhost = self.node.vhosts[event.vhost]
            self.node.connection_opened(self)
            client_log.opened(self)
        elif isinstance(event, ConnectionClosed):
            if event.error is not None and event.state is not None and not self.refusal_logged:
                client_log.connection_error(self, event.state, event.error, event.channel)
            self._finish()

    def _method(self, number: int, method: Any) -> None:
        if isinstance(method, Channel.Open):
            self.node.check_user_channel_limit(self.username)
            self.channels[number] = ChannelSession(self, number)
            self.conn.send_method(number, build(Channel.OpenOk))
        elif isinstance(method, Channel.Close):
            self._drop_channel(number)  # the connection has answered close-ok already
        else:
            channel = self.channels.get(number)
            if channel is not None and not channel.closed:
                channel.handle_method(method)

    @staticmethod
    def _fill_method_ids(error: AMQPError, method: Any) -> None:
        if method is not None and not error.class_id:
            error.class_id, error.method_id = method_ids(method)

    # ---- output -----------------------------------------------------------------------------

    def flush_confirms(self) -> None:
        durable = None  # looked up only for a channel with confirms due (through the node, the store)
        for channel in self.channels.values():
            if channel.awaiting_confirms:
                if durable is None:
                    durable = self.node.durable_position()
                channel.flush_confirms(durable)

    def data_to_send(self, limit: int | None = None) -> bytes:
        """See ServerConnection.data_to_send. What it leaves queued is counted as unsent; the server adds
        what it holds (see `output_left`)."""
        self.flush_confirms()
        data = self.conn.data_to_send(limit)
        self.unsent = self.conn.output_size()
        if self.output.left > 0:  # not stopped: what was taken is the server's now (see output_left)
            self.output.left = OUTBOX_HIGH_WATER - self.unsent
        return data

    def output_left(self, held: int) -> None:
        """The server's report after a write: it still holds `held` bytes for the socket, besides what is
        left queued here. Stopped consumers take messages again once that has drained enough."""
        unsent = self.unsent = held + self.conn.output_size()
        if self.output.left > 0:
            self.output.left = OUTBOX_HIGH_WATER - unsent
        elif unsent < OUTBOX_LOW_WATER:
            self.output.left = OUTBOX_HIGH_WATER - unsent
            for channel in list(self.channels.values()):
                for consumer in list(channel.consumers.values()):
                    consumer.queue.credit_changed()

    # ---- closing ----------------------------------------------------------------------------

    def check_ack_timeouts(self, now: float) -> None:
        """Close each channel whose consumer held a delivery past its acknowledgement timeout: its
        unacked messages go back to their queues for other consumers."""
        for number, channel in list(self.channels.items()):
            error = channel.ack_timeout(now)
            if error is not None:
                self._close_channel(number, error)
                self.wake()

    def _close_channel(self, number: int, error: ChannelError) -> None:
        channel = self.channels.get(number)
        if channel is not None:
            client_log.channel_error(self, number, error)
        if channel is not None and channel.awaiting_confirms:
            # Confirms for publishes before the error still go out.
            channel.flush_confirms(self.node.durable_position())
        self.conn.close_channel(number, error)
        self._drop_channel(number)

    def _drop_channel(self, number: int) -> None:
        channel = self.channels.pop(number, None)
        if channel is not None:
            channel.close()

    def close(self, error: AMQPError | None = None, *, channel: int = 0) -> None:
        """Close the connection (connection.close sent; the socket closes on close-ok or timeout), for
        `error` on `channel` if any."""
        if error is not None and self.conn.state not in (State.AWAIT_HEADER, State.CLOSING, State.CLOSED):
            client_log.connection_error(self, self.conn.state, error, channel)
        self.conn.close(error)
        self._release_channels()
        self.wake()

    def _release_channels(self) -> None:
        for number in list(self.channels):
            self._drop_channel(number)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._release_channels()
        if self.vhost is not None:
            for queue in list(self.vhost.exclusive_queues_of(self)):
                self.vhost.remove_queue(queue)
        self.node.connection_closed(self)
        self._log_closed()

    def _log_closed(self) -> None:
        if self.conn.refused_header is not None:
            client_log.bad_header(self, self.conn.refused_header)
        elif self._lost is None:  # connection.close and close-ok, whichever side began
            client_log.closed(self)
        else:
            state, reason = self._lost
            if reason is not None:
                client_log.dropped(self, reason)
            elif not self.received_any:  # a port probe, as a load balancer's health check
                client_log.closed(self, level=logging.DEBUG)
            elif state is State.CLOSING:  # we had sent connection.close (the error is logged)
                client_log.closed(self)
            else:
                client_log.closed(self, level=logging.WARNING, reason=UNEXPECTED_CLOSE)
