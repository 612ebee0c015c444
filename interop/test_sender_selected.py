"""Sender-selected distribution: the CC and BCC headers add routing keys; BCC is never delivered."""

from __future__ import annotations

import pika

from interop.brokers import Broker
from interop.clients import pika_connection, unique


def test_cc_and_bcc_route_copies_and_bcc_is_stripped(broker: Broker) -> None:
    exchange = unique("cc-x")
    main_queue, cc_queue, bcc_queue = unique("main"), unique("cc"), unique("bcc")
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange, "direct", auto_delete=True)
        for name in (main_queue, cc_queue, bcc_queue):
            channel.queue_declare(name, exclusive=True)
            channel.queue_bind(name, exchange, name)
        headers = {"CC": [cc_queue], "BCC": [bcc_queue], "kept": "yes"}
        channel.basic_publish(exchange, main_queue, b"hello", pika.BasicProperties(headers=headers))
        # The default exchange honours CC too: its routing keys are queue names.
        channel.basic_publish("", main_queue, b"direct", pika.BasicProperties(headers={"CC": [cc_queue]}))

        received = {}
        for name in (main_queue, cc_queue, bcc_queue):
            method, properties, body = channel.basic_get(name, auto_ack=True)
            assert body == b"hello", name
            assert method.routing_key == main_queue  # delivered with its own routing key
            assert "BCC" not in properties.headers and properties.headers["CC"] == [cc_queue]
            received[name] = properties.headers["kept"]
        assert received == {main_queue: "yes", cc_queue: "yes", bcc_queue: "yes"}
        assert channel.basic_get(cc_queue, auto_ack=True)[2] == b"direct"
        assert channel.basic_get(main_queue, auto_ack=True)[2] == b"direct"
        assert channel.basic_get(bcc_queue, auto_ack=True)[0] is None
