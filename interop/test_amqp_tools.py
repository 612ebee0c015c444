"""Debian's amqp-tools (librabbitmq's C client): declare, publish, get and consume from the shell."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import UnroutableError

from interop.brokers import Broker
from interop.clients import client_env, client_process, run_client, unique, wait_until

TOOLS = ("amqp-declare-queue", "amqp-publish", "amqp-get", "amqp-consume", "amqp-delete-queue")
pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS),
    reason="amqp-tools is not installed (apt-get install amqp-tools)",
)


def tools_url(broker: Broker) -> str:
    # librabbitmq reads the vhost from the URL path: "/" would mean the vhost "", so spell out "%2f".
    return f"amqp://guest:guest@{broker.host}:{broker.port}/%2f"


def test_declare_publish_get_consume(broker: Broker, tmp_path: Path) -> None:
    url = tools_url(broker)
    env = client_env(url)
    name = unique("amqp-tools")

    def tool(*args: str) -> str:
        return run_client([args[0], "-u", url, *args[1:]], tmp_path, env, timeout=30)

    assert tool("amqp-declare-queue", "-q", name) == f"{name}\n"
    tool("amqp-publish", "-r", name, "-b", "first", "-C", "text/plain", "-p")
    assert tool("amqp-get", "-q", name) == "first"
    # amqp-get on an empty queue reports the basic.get-empty as a failure.
    with pytest.raises(AssertionError, match="exited with"):
        tool("amqp-get", "-q", name)

    tool("amqp-publish", "-r", name, "-b", "second", "-H", "source: shell")
    # amqp-consume pipes each message body into the command's standard input.
    assert tool("amqp-consume", "-q", name, "-c", "1", "cat") == "second"
    tool("amqp-delete-queue", "-q", name)
    with pytest.raises(AssertionError, match="NOT_FOUND"):
        tool("amqp-get", "-q", name)


def test_amqp_consume_binds_to_exchange(broker: Broker, channel: BlockingChannel, tmp_path: Path) -> None:
    url = tools_url(broker)
    key = unique("amqp-tools-key")
    args = ["amqp-consume", "-u", url, "-e", "amq.direct", "-r", key, "-c", "2", "cat"]
    with client_process(args, tmp_path, client_env(url)) as consumer:
        channel.confirm_delivery()
        # amqp-consume prints nothing once bound: retry a mandatory publish until its queue routes it.
        wait_until(lambda: routed(channel, key, b"one"), what="amqp-consume's queue to be bound")
        channel.basic_publish("amq.direct", key, b"two", mandatory=True)
        consumer.expect(lambda line: line == "onetwo")
        assert consumer.wait() == 0, consumer.transcript()


def routed(channel: BlockingChannel, key: str, body: bytes) -> bool:
    try:
        channel.basic_publish("amq.direct", key, body, mandatory=True)
    except UnroutableError:
        return False
    return True
