"""The IPv6 loopback: a broker listening on 127.0.0.1 and ::1 on one port (RabbitMQ: listeners.tcp.1 and .2;
Leveret: `listeners.amqp.host: [127.0.0.1, "::1"]`, its embedded default) serves pika over amqp://[::1]:PORT,
guest included (a loopback-only user: ::1 is loopback), and a message crosses from one family to the other."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from interop.brokers import Broker
from interop.clients import pika_connection, unique


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")


def test_pika_over_the_ipv6_loopback_as_guest(private_broker: Callable[..., Broker]) -> None:
    broker = private_broker(ipv6=True)
    queue = unique("ipv6")
    with pika_connection(broker.ipv6_url) as over_ipv6, pika_connection(broker.url) as over_ipv4:
        sender = over_ipv6.channel()
        sender.queue_declare(queue, auto_delete=True)
        sender.confirm_delivery()
        sender.basic_publish("", queue, b"over ::1")
        method, _properties, body = over_ipv4.channel().basic_get(queue, auto_ack=True)
        assert method is not None and body == b"over ::1"
        over_ipv4.channel().basic_publish("", queue, b"over 127.0.0.1")
        for method, _properties, body in sender.consume(queue, inactivity_timeout=10):
            assert method is not None and body == b"over 127.0.0.1"
            sender.basic_ack(method.delivery_tag)
            break
        sender.cancel()
