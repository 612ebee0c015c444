"""A dead-letter chain (expired, then rejected) with pika: where the message goes and its x-death header."""

from __future__ import annotations

import datetime

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.compat import long

from interop.clients import queue_depth, unique, wait_until


def test_dead_letter_chain_writes_x_death_as_rabbitmq(channel: BlockingChannel) -> None:
    expiring, rejecting, final = unique("dl-ttl"), unique("dl-reject"), unique("dl-final")
    exchange = unique("dlx")
    channel.exchange_declare(exchange, "direct", auto_delete=True)
    # expiring --(expired, key replaced)--> exchange --> rejecting --(rejected)--> default exchange --> final
    channel.queue_declare(expiring, arguments={
        "x-message-ttl": 100, "x-dead-letter-exchange": exchange, "x-dead-letter-routing-key": "next",
    })
    channel.queue_declare(rejecting, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": final,
    })
    channel.queue_declare(final)
    channel.queue_bind(rejecting, exchange, "next")
    channel.confirm_delivery()
    channel.basic_publish("", expiring, b"doomed", pika.BasicProperties(
        expiration="5000", headers={"app": "kept", "CC": ["copy"]}, message_id="m-1",
    ))
    wait_until(lambda: queue_depth(channel, rejecting) == 1, timeout=5, what="the expired message")

    method, properties, body = channel.basic_get(rejecting)
    assert (method.exchange, method.routing_key, body) == (exchange, "next", b"doomed")
    assert properties.expiration is None  # removed, and recorded as original-expiration
    assert "CC" not in properties.headers  # dropped with the replaced routing key
    channel.basic_reject(method.delivery_tag, requeue=False)
    wait_until(lambda: queue_depth(channel, final) == 1, timeout=5, what="the rejected message")

    method, properties, body = channel.basic_get(final, auto_ack=True)
    assert (method.exchange, method.routing_key, body, properties.message_id) == ("", final, b"doomed", "m-1")
    headers = properties.headers
    assert list(headers) == ["app", "x-death", "x-first-death-exchange", "x-first-death-queue",
                             "x-first-death-reason"]
    first_death = [headers[f"x-first-death-{key}"] for key in ("exchange", "queue", "reason")]
    assert first_death == ["", expiring, "expired"]
    newest, first = headers["x-death"]
    now = datetime.datetime.now(datetime.UTC)
    for death in (newest, first):
        assert isinstance(death["count"], long)  # a 64-bit long on the wire
        assert abs(death.pop("time") - now) < datetime.timedelta(seconds=30)
    # The newest death is first; an entry written anew has RabbitMQ's own key order.
    assert list(newest) == ["count", "exchange", "queue", "reason", "routing-keys"]
    assert newest == {"count": 1, "exchange": exchange, "queue": rejecting, "reason": "rejected",
                      "routing-keys": ["next"]}
    assert list(first) == ["count", "reason", "queue", "exchange", "routing-keys", "original-expiration"]
    assert first == {"count": 1, "reason": "expired", "queue": expiring, "exchange": "",
                     "routing-keys": [expiring, "copy"], "original-expiration": "5000"}
    for name in (expiring, rejecting, final):
        channel.queue_delete(name)


def test_a_dead_letter_cycle_without_a_reject_drops_the_message(channel: BlockingChannel) -> None:
    name = unique("dl-loop")
    channel.queue_declare(name, arguments={
        "x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": name,
    })
    channel.confirm_delivery()
    channel.basic_publish("", name, b"loops")
    wait_until(lambda: queue_depth(channel, name) == 0, timeout=5, what="the expired message")
    assert queue_depth(channel, name) == 0
    channel.queue_delete(name)


def test_a_message_expired_again_counts_up_its_x_death_entry(channel: BlockingChannel) -> None:
    source, parking = unique("dl-again"), unique("dl-park")
    channel.queue_declare(source, arguments={
        "x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": parking,
    })
    channel.queue_declare(parking, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": source,
    })
    channel.confirm_delivery()
    channel.basic_publish("", source, b"again")
    for expected in (1, 2):
        wait_until(lambda: queue_depth(channel, parking) == 1, timeout=5, what="the expired message")
        method, properties, _ = channel.basic_get(parking)
        counts = [(d["queue"], d["reason"], d["count"]) for d in properties.headers["x-death"]]
        assert counts[0] == (source, "expired", expected)
        channel.basic_reject(method.delivery_tag, requeue=False)  # back to source: a reject breaks the cycle
    assert counts == [(source, "expired", 2), (parking, "rejected", 1)]
    for name in (source, parking):
        channel.queue_delete(name)
