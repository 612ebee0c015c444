"""Queue argument checks: each text below is what RabbitMQ 3.10 answered to the same declare."""

from __future__ import annotations

from typing import Any

import pytest
from pamqp.commands import Queue

from leveret.amqp.errors import ChannelError
from leveret.broker.queues.arguments import validate_queue_arguments
from leveret.broker.queues.settings import QueueSettings
from tests.lifecycle_support import clocked_node, closed_with
from tests.test_session import connect

WHERE = "for queue 'q' in vhost '/'"


def bad(key: str, problem: str) -> str:
    return f"invalid arg '{key}' {WHERE}: {problem}"


def other_type(key: str, kind: str) -> str:
    return f"invalid arg '{key}' {WHERE} of queue type rabbit_{kind}_queue"


EXPECTED_INTEGER = '"expected integer, got longstr"'

CASES: list[tuple[dict[str, Any], str]] = [
    ({"x-message-ttl": -1}, bad("x-message-ttl", "{value_negative,-1}")),
    ({"x-message-ttl": "abc"}, bad("x-message-ttl", EXPECTED_INTEGER)),
    ({"x-message-ttl": True}, bad("x-message-ttl", '"expected integer, got bool"')),
    ({"x-message-ttl": 315360000001}, bad("x-message-ttl", "{value_too_large,315360000001}")),
    ({"x-expires": 0}, bad("x-expires", "{value_zero,0}")),
    ({"x-expires": -5}, bad("x-expires", "{value_negative,-5}")),
    ({"x-max-length": -1}, bad("x-max-length", "{value_negative,-1}")),
    ({"x-max-length-bytes": "a"}, bad("x-max-length-bytes", EXPECTED_INTEGER)),
    ({"x-overflow": "nope"}, bad("x-overflow", "invalid_overflow")),
    ({"x-overflow": 3}, bad("x-overflow", "{unacceptable_type,signedint}")),
    ({"x-max-priority": 256}, bad("x-max-priority", "{max_value_exceeded,256}")),
    ({"x-max-priority": -1}, bad("x-max-priority", "{value_negative,-1}")),
    (
        {"x-dead-letter-exchange": 5},
        "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'",
    ),
    ({"x-dead-letter-routing-key": "k"}, bad("x-dead-letter-routing-key", "routing_key_but_no_dlx_defined")),
    (
        {"x-dead-letter-routing-key": 5, "x-dead-letter-exchange": "e"},
        bad("x-dead-letter-routing-key", "{unacceptable_type,signedint}"),
    ),
    ({"x-single-active-consumer": "true"}, bad("x-single-active-consumer", "{unacceptable_type,longstr}")),
    ({"x-queue-mode": "weird"}, bad("x-queue-mode", "\"unsupported queue mode 'weird'\"")),
    ({"x-queue-type": "weird"}, bad("x-queue-type", "\"unsupported queue type 'weird'\"")),
    ({"x-delivery-limit": 3}, other_type("x-delivery-limit", "classic")),
    ({"x-queue-type": "quorum", "x-max-priority": 5}, other_type("x-max-priority", "quorum")),
    ({"x-queue-type": "stream", "x-message-ttl": 5}, other_type("x-message-ttl", "stream")),
    # Several bad arguments: the first in RabbitMQ's own order is reported, whatever the table's order.
    ({"x-max-length": -1, "x-message-ttl": -1}, bad("x-message-ttl", "{value_negative,-1}")),
]


@pytest.mark.parametrize(("arguments", "text"), CASES)
def test_bad_arguments_get_rabbitmq_texts(arguments: dict[str, Any], text: str) -> None:
    with pytest.raises(ChannelError) as raised:
        validate_queue_arguments("q", "/", arguments)
    assert (raised.value.code, raised.value.text) == (406, text)


@pytest.mark.parametrize(
    "arguments",
    [{"x-max-priority": 0}, {"x-consumer-timeout": 5}, {"x-queue-type": "quorum", "x-delivery-limit": "abc"}],
)
def test_arguments_rabbitmq_accepts(arguments: dict[str, Any]) -> None:
    validate_queue_arguments("q", "/", arguments)


def test_a_bad_argument_closes_the_channel() -> None:
    node, _ = clocked_node()
    client = connect(node)
    frames = client.method(1, Queue.Declare(queue="q", arguments={"x-expires": 0}))
    assert closed_with(frames) == (406, "PRECONDITION_FAILED - " + bad("x-expires", "{value_zero,0}"))


def test_settings_of_a_queue_without_lifecycle_arguments_are_plain() -> None:
    assert QueueSettings.from_arguments({"x-queue-mode": "lazy", "x-custom": 1}).plain
    assert not QueueSettings.from_arguments({"x-queue-type": "quorum"}).plain
    assert not QueueSettings.from_arguments({"x-dead-letter-exchange": ""}).plain
