"""Routing through each exchange type, checked by what every bound queue ends up holding."""

from __future__ import annotations

import pika
from pika.adapters.blocking_connection import BlockingChannel

from interop.clients import queue_depth, unique, wait_until


def drain(channel: BlockingChannel, queue: str) -> list[bytes]:
    bodies = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def bound_queues(channel: BlockingChannel, exchange: str, bindings: dict[str, list[str]]) -> dict[str, str]:
    """Declare one exclusive queue per label, bound with each of its routing keys; label -> queue name."""
    names = {}
    for label, keys in bindings.items():
        names[label] = channel.queue_declare("", exclusive=True).method.queue
        for key in keys:
            channel.queue_bind(names[label], exchange, key)
    return names


def routed(
    channel: BlockingChannel, exchange: str, names: dict[str, str], keys: list[str]
) -> dict[str, list[str]]:
    """Publish one message per key (body = key) with confirms; label -> keys that reached its queue."""
    channel.confirm_delivery()
    for key in keys:
        channel.basic_publish(exchange, key, key.encode())
    return {label: [body.decode() for body in drain(channel, queue)] for label, queue in names.items()}


def test_direct(channel: BlockingChannel) -> None:
    exchange = unique("direct")
    channel.exchange_declare(exchange, "direct", auto_delete=True)
    names = bound_queues(channel, exchange, {"a": ["a"], "b": ["b", "shared"], "c": ["shared"]})
    assert routed(channel, exchange, names, ["a", "b", "shared", "none", "A"]) == {
        "a": ["a"],
        "b": ["b", "shared"],
        "c": ["shared"],
    }


def test_fanout_ignores_routing_key(channel: BlockingChannel) -> None:
    exchange = unique("fanout")
    channel.exchange_declare(exchange, "fanout", auto_delete=True)
    names = bound_queues(channel, exchange, {"a": [""], "b": ["ignored"], "c": ["x", "y"]})
    keys = ["", "anything", "x"]
    # A queue bound twice to a fanout still gets one copy per message.
    assert routed(channel, exchange, names, keys) == {"a": keys, "b": keys, "c": keys}


TOPIC_BINDINGS = {
    "orange": ["*.orange.*"],
    "rabbit_lazy": ["*.*.rabbit", "lazy.#"],
    "hash": ["#"],
    "star": ["*"],
    "hash_middle": ["a.#.z"],
}
TOPIC_CASES = {
    "quick.orange.rabbit": ["orange", "rabbit_lazy", "hash"],
    "lazy.orange.elephant": ["orange", "rabbit_lazy", "hash"],
    "quick.orange.fox": ["orange", "hash"],
    "lazy.brown.fox": ["rabbit_lazy", "hash"],
    "lazy.pink.rabbit": ["rabbit_lazy", "hash"],  # matched by both bindings, delivered once
    "quick.brown.fox": ["hash"],
    "orange": ["hash", "star"],
    "quick.orange.male.rabbit": ["hash"],
    "lazy.orange.male.rabbit": ["rabbit_lazy", "hash"],
    "lazy": ["rabbit_lazy", "hash", "star"],  # '#' matches zero words
    "": ["hash"],  # the empty key has no word for '*' to match
    "a.z": ["hash", "hash_middle"],
    "a.b.c.z": ["hash", "hash_middle"],
    "a.b.c": ["hash"],
}


def test_topic_wildcards(channel: BlockingChannel) -> None:
    exchange = unique("topic")
    channel.exchange_declare(exchange, "topic", auto_delete=True)
    names = bound_queues(channel, exchange, TOPIC_BINDINGS)
    got = routed(channel, exchange, names, list(TOPIC_CASES))
    expected = {
        label: [key for key, labels in TOPIC_CASES.items() if label in labels] for label in TOPIC_BINDINGS
    }
    assert got == expected


HEADER_CASES: list[tuple[dict[str, object], bool, bool]] = [
    # message headers, matches x-match=all, matches x-match=any
    ({"format": "pdf", "type": "report"}, True, True),
    ({"format": "pdf", "type": "report", "extra": 1}, True, True),
    ({"format": "pdf"}, False, True),
    ({"type": "report", "format": "zip"}, False, True),
    ({"format": "zip", "type": "log"}, False, False),
    ({}, False, False),
]


def test_headers_all_and_any(channel: BlockingChannel) -> None:
    exchange = unique("headers")
    channel.exchange_declare(exchange, "headers", auto_delete=True)
    names = {}
    for match in ("all", "any"):
        names[match] = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(names[match], exchange, "", {"x-match": match, "format": "pdf", "type": "report"})
    channel.confirm_delivery()
    for index, (headers, _all, _any) in enumerate(HEADER_CASES):
        channel.basic_publish(exchange, "ignored", str(index).encode(), pika.BasicProperties(headers=headers))
    got = {match: [int(body) for body in drain(channel, queue)] for match, queue in names.items()}
    assert got == {
        "all": [i for i, case in enumerate(HEADER_CASES) if case[1]],
        "any": [i for i, case in enumerate(HEADER_CASES) if case[2]],
    }


def test_exchange_to_exchange_binding(channel: BlockingChannel) -> None:
    source, destination = unique("e2e-src"), unique("e2e-dst")
    channel.exchange_declare(source, "topic", auto_delete=True)
    channel.exchange_declare(destination, "fanout", auto_delete=True)
    channel.exchange_bind(destination, source, "logs.#")
    names = bound_queues(channel, destination, {"all": [""]})
    assert routed(channel, source, names, ["logs.error", "metrics.cpu", "logs"]) == {
        "all": ["logs.error", "logs"]
    }


def test_consistent_hash_shares_follow_weights(channel: BlockingChannel) -> None:
    weights = (1, 2, 3)
    exchange = unique("chash")
    channel.exchange_declare(exchange, "x-consistent-hash", auto_delete=True)
    # In x-consistent-hash the binding key is the queue's weight.
    names = bound_queues(channel, exchange, {str(w): [str(w)] for w in weights})
    total = 10_000
    for i in range(total):
        channel.basic_publish(exchange, f"key-{i}", b"")
    wait_until(
        lambda: sum(queue_depth(channel, q) for q in names.values()) == total, what="all hashed messages"
    )
    for weight, queue in names.items():
        share = queue_depth(channel, queue) / total
        assert abs(share - int(weight) / sum(weights)) <= 0.05, (weight, share)
