"""A clean stop (SIGTERM) tells connected clients why, as RabbitMQ does: 320 CONNECTION_FORCED."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pika.exceptions import ConnectionClosedByBroker

from interop.brokers import Broker
from interop.clients import pika_connection


def test_sigterm_closes_client_connections_with_320(private_broker: Callable[[], Broker]) -> None:
    broker = private_broker()
    with pika_connection(broker.url) as connection:
        connection.channel()
        assert broker.stop() == 0
        with pytest.raises(ConnectionClosedByBroker) as closed:
            connection.process_data_events(time_limit=1)
        assert closed.value.reply_code == 320
        assert (
            closed.value.reply_text
            == "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
        )
