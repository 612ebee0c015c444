"""Resource alarms as pika sees them: a broker started with its memory or disk alarm already set blocks a
connection when it publishes, and keeps serving connections that do not publish."""

from __future__ import annotations

import time
from collections.abc import Callable

import pika
import pytest

from interop.brokers import Broker, ResourceLimits
from interop.clients import pika_connection, pump_until, queue_depth, unique

ALARMS = {
    # One byte of memory: far below what any broker uses.
    "low on memory": ResourceLimits(memory_high_watermark=1),
    # An exabyte of free disk: more than any disk has.
    "low on disk": ResourceLimits(disk_free_limit=10**18),
}


def blocked_publisher(broker: Broker, queue: str, body: bytes) -> list[str]:
    """Publish `body` on a new connection, then one message more; the reasons of connection.blocked.

    The connection is left open: a blocked connection is not read, so its connection.close would go
    unanswered until the alarm clears.
    """
    reasons: list[str] = []
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    connection.add_on_connection_blocked_callback(lambda _conn, frame: reasons.append(frame.method.reason))
    channel = connection.channel()
    channel.queue_declare(queue)
    assert not reasons, "blocked before publishing"
    channel.basic_publish("", queue, body)
    pump_until(connection, lambda: bool(reasons), what="connection.blocked")
    channel.basic_publish("", queue, b"after")  # sent, but the broker does not read it
    return reasons


@pytest.mark.parametrize("reason", list(ALARMS))
def test_publishers_are_blocked_and_consumers_keep_flowing(
    private_broker: Callable[..., Broker], reason: str
) -> None:
    broker = private_broker(ALARMS[reason])
    held, bodiless = unique("alarm-held"), unique("alarm-bodiless")
    # Blocked at the content header: the body is not read, so this publish waits for the alarm to clear.
    assert blocked_publisher(broker, held, b"body") == [reason]
    # A publish without a body is complete at its header, and routed before the connection blocks.
    assert blocked_publisher(broker, bodiless, b"") == [reason]

    with pika_connection(broker.url) as connection:  # never publishes, so it keeps being read
        consumer = connection.channel()
        method, _, body = consumer.basic_get(bodiless)
        assert body == b""
        consumer.basic_ack(method.delivery_tag)
        time.sleep(0.5)
        assert (queue_depth(consumer, held), queue_depth(consumer, bodiless)) == (0, 0)
