"""Direct reply-to (`amq.rabbitmq.reply-to`): RPC replies straight to the requester's channel, no queue.

A channel consumes from the pseudo-queue `amq.rabbitmq.reply-to` (no-ack); a request it publishes
with reply_to `amq.rabbitmq.reply-to` leaves with reply_to rewritten to `amq.rabbitmq.reply-to.<token>`;
a reply published to the default exchange with that routing key goes to the requester's consumer.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING, Protocol

from leveret.amqp.constants import PRECONDITION_FAILED
from leveret.amqp.errors import ChannelError
from leveret.amqp.fastpath import shortstr
from leveret.amqp.properties import REPLY_TO, join_properties, split_properties
from leveret.broker.message import Message
from leveret.broker.queues.consumer import Consumer
from leveret.broker.queues.entry import Entry

if TYPE_CHECKING:
    from leveret.broker.queues.consumer import ConsumerChannel
    from leveret.broker.session.services import NodeServices

    class ReplyChannel(ConsumerChannel, Protocol):
        reply_token: str | None  # set while the channel has a reply consumer


MAGIC_QUEUE = "amq.rabbitmq.reply-to"
MAGIC_QUEUE_RAW = MAGIC_QUEUE.encode()
PREFIX = MAGIC_QUEUE + "."


class _ReplyTarget:
    """Stands in for a queue so a reply consumer can be a plain Consumer."""

    name = MAGIC_QUEUE

    def __init__(self) -> None:
        # What ChannelSession.deliver counts on a consumer's queue (message_stats); no queue shows these.
        self.delivered = 0
        self.redelivered = 0


def start_consumer(node: NodeServices, channel: ReplyChannel, tag: str, *, no_ack: bool) -> None:
    if not no_ack:
        raise ChannelError(PRECONDITION_FAILED, "reply consumer cannot acknowledge", 60, 20)
    if channel.reply_token is not None:
        raise ChannelError(PRECONDITION_FAILED, "reply consumer already set", 60, 20)
    token = base64.urlsafe_b64encode(os.urandom(18)).decode()
    consumer = Consumer(tag, _ReplyTarget(), channel, no_ack=True, exclusive=True, prefetch=0)  # type: ignore[arg-type]
    node.reply_consumers[token] = consumer
    channel.reply_token = token


def cancel_consumer(node: NodeServices, channel: ReplyChannel, tag: str) -> None:
    token = channel.reply_token
    if token is not None and node.reply_consumers[token].tag == tag:
        del node.reply_consumers[token]
        channel.reply_token = None


def forget_channel(node: NodeServices, channel: ReplyChannel) -> None:
    token = channel.reply_token
    if token is not None:
        del node.reply_consumers[token]
        channel.reply_token = None


def rewrite_reply_to(message: Message, channel: ReplyChannel) -> Message:
    properties = message.properties
    if properties.reply_to != MAGIC_QUEUE:
        return message
    token = channel.reply_token
    if token is None:
        raise ChannelError(PRECONDITION_FAILED, "fast reply consumer does not exist", 60, 40)
    # Only reply_to changes: the other properties keep their bytes (header types, strings that are not UTF-8).
    fields = split_properties(message.properties_raw)
    fields[REPLY_TO] = shortstr(PREFIX + token)
    return Message(message.exchange, message.routing_key, join_properties(fields), message.body)


def deliver(node: NodeServices, message: Message) -> bool:
    """Send a reply to its requester; False when the requester is gone."""
    consumer = node.reply_consumers.get(message.routing_key[len(PREFIX) :])
    if consumer is None or consumer.channel.closed:
        return False
    consumer.deliver(Entry(message, 0))
    return True
