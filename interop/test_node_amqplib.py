"""Node's amqplib: the tutorial sender/receiver as users write them, confirms, returns and topic routing."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from pika.adapters.blocking_connection import BlockingChannel

from interop.brokers import Broker
from interop.clients import NODE_DIR, client_env, client_process, queue_depth, run_client, unique

pytestmark = pytest.mark.usefixtures("node_modules")

HELLO = " [x] Received 'Hello, RabbitMQ!'"


def node(script: str, *args: str) -> list[str]:
    return ["node", str(NODE_DIR / script), *args]


def test_hello_world_tutorial(broker: Broker, channel: BlockingChannel, tmp_path: Path) -> None:
    channel.queue_delete("hello")  # the tutorial's fixed queue name: start from a fresh one
    env = client_env(broker.url)

    assert run_client(node("sender.js"), tmp_path, env) == " [x] Sent 'Hello, RabbitMQ!'\n"
    assert queue_depth(channel, "hello") == 1
    with client_process(node("receiver.js"), tmp_path, env) as receiver:
        receiver.expect(lambda line: line == HELLO)  # the message that waited in the queue
        run_client(node("sender.js"), tmp_path, env)
        receiver.expect(lambda line: line == HELLO)  # and one delivered live
        receiver.signal(signal.SIGINT)  # Ctrl+C: the tutorial closes its channel and connection
        assert receiver.wait() == 0, receiver.transcript()
    assert [line for line in receiver.output if "Received" in line] == [HELLO, HELLO]
    # Both were acked: closing the receiver's channel requeued nothing.
    assert channel.basic_get("hello") == (None, None, None)
    channel.queue_delete("hello")


def test_confirm_channel_and_mandatory_return(
    broker: Broker, channel: BlockingChannel, tmp_path: Path
) -> None:
    name = unique("node-confirm")
    out = run_client(node("confirm_publish.js", name, "50"), tmp_path, client_env(broker.url))
    assert out.splitlines() == ["confirmed 50", "returned 312 NO_ROUTE lost"]
    assert queue_depth(channel, name) == 50
    method, props, body = channel.basic_get(name, auto_ack=True)
    assert (body, props.message_id, props.delivery_mode) == (b"message 0", "0", 2)
    channel.queue_delete(name)


def test_topic_exchange(broker: Broker, tmp_path: Path) -> None:
    patterns = "*.orange.*,lazy.#"
    keys = "quick.orange.rabbit,lazy.brown.fox,quick.brown.fox,lazy,a.orange.b.c,lazy.orange.male.rabbit"
    out = run_client(node("topic.js", unique("node-topic"), patterns, keys), tmp_path, client_env(broker.url))
    assert out.splitlines() == [
        "received quick.orange.rabbit",
        "received lazy.brown.fox",
        "received lazy",
        "received lazy.orange.male.rabbit",
    ]
