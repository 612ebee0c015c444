"""At-least-once dead-lettering (quorum queues, x-dead-letter-strategy with reject-publish): a rejected
message whose dead-letter exchange is missing is kept, and reaches its target, once, when the target is
declared. On RabbitMQ the retry timer is set to a second (interop/brokers.py), as Leveret's."""

from __future__ import annotations

import time

import pika
from pika.adapters.blocking_connection import BlockingChannel

from interop.clients import queue_depth, unique, wait_until

RETRY = 1.0  # seconds, both brokers (see above)


def reject_one(channel: BlockingChannel, queue: str, body: bytes) -> None:
    channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    method, _, got = channel.basic_get(queue)
    assert got == body
    channel.basic_reject(method.delivery_tag, requeue=False)


def declare_source(channel: BlockingChannel, name: str, exchange: str, overflow: str) -> None:
    channel.queue_declare(name, durable=True, arguments={
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": overflow,
    })


def declare_target(channel: BlockingChannel, exchange: str, target: str) -> None:
    channel.exchange_declare(exchange, "fanout", durable=True)
    channel.queue_declare(target, durable=True)
    channel.queue_bind(target, exchange)


def test_a_dead_letter_with_no_target_waits_for_it_and_arrives_once(channel: BlockingChannel) -> None:
    source, target, exchange = unique("alo-src"), unique("alo-dead"), unique("alo-dlx")
    declare_source(channel, source, exchange, "reject-publish")
    channel.confirm_delivery()
    try:
        reject_one(channel, source, b"keep me")
        assert queue_depth(channel, source) == 0  # held for dead-lettering, not ready
        time.sleep(RETRY * 2.5)  # retried with nowhere to go: still held
        declare_target(channel, exchange, target)
        wait_until(lambda: queue_depth(channel, target) == 1, timeout=10, what="the dead-lettered message")
        time.sleep(RETRY * 2.5)  # no more retries once it is there
        assert queue_depth(channel, target) == 1
        method, properties, body = channel.basic_get(target, auto_ack=True)
        assert body == b"keep me"
        (death,) = properties.headers["x-death"]
        assert (death["queue"], death["reason"], death["count"]) == (source, "rejected", 1)
    finally:
        channel.queue_delete(source)
        channel.queue_delete(target)
        channel.exchange_delete(exchange)


def test_without_reject_publish_the_dead_letter_is_lost_as_at_most_once(channel: BlockingChannel) -> None:
    source, target, exchange = unique("amo-src"), unique("amo-dead"), unique("amo-dlx")
    declare_source(channel, source, exchange, "drop-head")
    channel.confirm_delivery()
    try:
        reject_one(channel, source, b"lost")
        declare_target(channel, exchange, target)
        time.sleep(RETRY * 2.5)
        assert queue_depth(channel, target) == 0
        assert queue_depth(channel, source) == 0
    finally:
        channel.queue_delete(source)
        channel.queue_delete(target)
        channel.exchange_delete(exchange)
