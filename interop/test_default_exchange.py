"""The default exchange ("") cannot be declared (passively either), deleted or bound: 403 ACCESS_REFUSED
"operation not permitted on the default exchange" (rabbit_channel's check_not_default_exchange, checked
before permissions), closing only the channel, whose number a client may open again at once."""

from __future__ import annotations

from collections.abc import Callable

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

from interop.clients import unique

REFUSED = (403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def refusal(channel: BlockingChannel, action: Callable[[BlockingChannel], object]) -> tuple[int, str]:
    with pytest.raises(ChannelClosedByBroker) as closed:
        action(channel)
    return closed.value.reply_code, closed.value.reply_text


@pytest.mark.parametrize(
    "action",
    [
        lambda ch: ch.exchange_declare("", passive=True),
        lambda ch: ch.exchange_declare("", "direct"),
        lambda ch: ch.exchange_declare("", "fanout", durable=True),
        lambda ch: ch.exchange_delete(""),
    ],
    ids=["passive", "direct", "fanout", "delete"],
)
def test_the_default_exchange_is_off_limits(
    connection: pika.BlockingConnection, action: Callable[[BlockingChannel], object]
) -> None:
    assert refusal(connection.channel(), action) == REFUSED
    assert connection.is_open
    connection.channel().exchange_declare("amq.direct", passive=True)  # the others are there


def test_binding_a_queue_to_the_default_exchange_is_refused(connection: pika.BlockingConnection) -> None:
    queue = unique("default-bind")
    channel = connection.channel()
    channel.queue_declare(queue, exclusive=True)
    assert refusal(channel, lambda ch: ch.queue_bind(queue, "", "key")) == REFUSED


def test_a_channel_number_is_reused_right_after_each_refusal(connection: pika.BlockingConnection) -> None:
    for _ in range(10):
        channel = connection.channel(channel_number=5)
        assert refusal(channel, lambda ch: ch.exchange_declare("", passive=True)) == REFUSED
    channel = connection.channel(channel_number=5)
    assert channel.queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")
    channel.close()
    assert connection.is_open
