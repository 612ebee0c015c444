"""Publishing and getting without an AMQP channel: the management API's HTTP way in (RabbitMQ's
/api/exchanges/.../publish and /api/queues/.../get).

The same rules as a channel's basic.publish and basic.get: the exchange must exist and not be internal,
user_id must be the publisher's, expiration must be a TTL, CC/BCC route too; a get takes messages as
basic.get does and then acknowledges, rejects or requeues them together. Permission checks are the
caller's (it knows the user's permissions in the vhost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from leveret.amqp.constants import ACCESS_REFUSED, PRECONDITION_FAILED
from leveret.amqp.errors import ChannelError
from leveret.broker.message import Message
from leveret.broker.queues.expiry import check_expiration
from leveret.broker.queues.paging import HeadGetter, HeadLoading
from leveret.broker.queues.queue import Queue
from leveret.broker.sender_selected import split_routing_keys
from leveret.broker.vhost import VirtualHost

# What happens to the messages a get took: RabbitMQ's ackmode values.
AckMode = Literal["ack_requeue_true", "ack_requeue_false", "reject_requeue_true", "reject_requeue_false"]
ACK_MODES: tuple[AckMode, ...] = (
    "ack_requeue_true",
    "ack_requeue_false",
    "reject_requeue_true",
    "reject_requeue_false",
)


@dataclass(frozen=True, slots=True)
class Published:
    routed: bool
    position: int  # the store position that makes it durable (0: nothing to wait for)


def publish(
    vhost: VirtualHost,
    username: str,
    exchange_name: str,
    routing_key: str,
    properties_raw: bytes,
    body: bytes,
) -> Published:
    exchange = vhost.exchange(exchange_name, local=True)  # a publish never waits for etcd
    if exchange.internal:
        raise ChannelError(
            ACCESS_REFUSED, f"cannot publish to internal exchange '{exchange.name}' in vhost '{vhost.name}'"
        )
    message = Message(exchange.name, routing_key, properties_raw, body)
    if message.user_id is not None and message.user_id != username:
        raise ChannelError(
            PRECONDITION_FAILED,
            f"user_id property set to '{message.user_id}' but authenticated user was '{username}'",
        )
    if message.expiration is not None:
        check_expiration(message.expiration)
    message, extra_keys = split_routing_keys(message)
    queues = vhost.route(exchange, message, extra_keys)
    position = 0
    for queue in queues:
        needed = queue.enqueue(message)
        if needed is not None and needed > position:
            position = needed
    return Published(bool(queues), position)


@dataclass(frozen=True, slots=True)
class Got:
    message: Message
    redelivered: bool  # as basic.get-ok says it: before a requeue by this get marks it so
    remaining: int  # basic.get-ok's message_count: what was left in the queue after this one


def take(queue: Queue, count: int, got: list[Got], seqs: list[int], getter: HeadGetter | None = None) -> bool:
    """Take messages as basic.get does until `got` holds `count` (their seqs go to `seqs`). False when
    the queue's next messages are still on disk: `getter` is told (head_ready) once they are read back,
    and the caller takes on then."""
    while len(got) < count:
        entry = queue.take(getter)
        if entry is None:
            break
        if isinstance(entry, HeadLoading):
            return False
        seqs.append(entry.seq)
        got.append(Got(entry.message, entry.redelivered, queue.message_count))
    return True


def finish(queue: Queue, seqs: list[int], ackmode: AckMode) -> None:
    """What a get took, acknowledged (gone), rejected (dead-lettered where the queue says so) or requeued
    (redelivered next time), all together, per `ackmode`."""
    if seqs:
        if ackmode == "ack_requeue_false":
            queue.settle(seqs)
        elif ackmode == "reject_requeue_false":
            queue.reject(seqs)
        else:
            queue.requeue(seqs)


def get(queue: Queue, count: int, ackmode: AckMode) -> list[Got]:
    """Up to `count` messages, taken and then settled at once (`take`, `finish`): for a caller that cannot
    wait, so a head on disk is read back here, blocking."""
    got: list[Got] = []
    seqs: list[int] = []
    while len(got) < count:
        entry = queue.take_now()
        if entry is None:
            break
        seqs.append(entry.seq)
        got.append(Got(entry.message, entry.redelivered, queue.message_count))
    finish(queue, seqs, ackmode)
    return got
