"""Permissions checked where RabbitMQ checks them: dead-lettering and alternate exchanges (a queue or
exchange that will publish somewhere needs write there), server-named queues, publishing before the
exchange lookup, and topic permissions (routing-key patterns per topic exchange, with {username}).

The texts are RabbitMQ 3.10's (rabbit_access_control): every refusal is 403 ACCESS_REFUSED on the channel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

from interop.brokers import Broker, ExtraUser, TopicRule
from interop.clients import pika_connection, unique
from interop.conftest import new_broker

LIMITED = ExtraUser(
    "limited",
    "limited-secret",
    write=r"^(.*ok-.*|amq\.topic|amq\.direct|amq\.default)$",
    read=r"^(.*ok-.*|amq\.topic|amq\.direct)$",
    topics=(
        TopicRule("amq.topic", write=r"^{username}\.", read=r"^{username}\.public\."),
        # A topic permission on a direct exchange is never consulted.
        TopicRule("amq.direct", write="^nothing$", read="^nothing$"),
    ),
)
NAMED = ExtraUser("named", "named-secret", configure=r"^app\.")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    instance = new_broker(tmp_path_factory.mktemp("secured"), users=(LIMITED, NAMED))
    try:
        instance.start()
        yield instance
    finally:
        instance.close()


def _url(broker: Broker, user: ExtraUser) -> str:
    return f"amqp://{user.name}:{user.password}@{broker.host}:{broker.port}/"


@pytest.fixture
def limited(secured: Broker) -> Iterator[pika.BlockingConnection]:
    with pika_connection(_url(secured, LIMITED)) as connection:
        yield connection


@pytest.fixture
def guest(secured: Broker) -> Iterator[BlockingChannel]:
    with pika_connection(secured.url) as connection:
        yield connection.channel()


def _refused(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ChannelClosedByBroker) as caught:
        call(*args, **kwargs)
    assert caught.value.reply_code == 403, caught.value
    return caught.value.reply_text


def test_dead_letter_exchange_needs_write_on_it(limited: pika.BlockingConnection) -> None:
    name = unique("ok-dlx")
    text = _refused(
        limited.channel().queue_declare, name, arguments={"x-dead-letter-exchange": "forbidden-x"}
    )
    assert text == "ACCESS_REFUSED - access to exchange 'forbidden-x' in vhost '/' refused for user 'limited'"
    channel = limited.channel()
    channel.queue_declare(name, arguments={"x-dead-letter-exchange": "ok-x"})
    channel.queue_delete(name)


def test_dead_letter_exchange_needs_read_on_the_queue(limited: pika.BlockingConnection) -> None:
    name = unique("unreadable")
    text = _refused(limited.channel().queue_declare, name, arguments={"x-dead-letter-exchange": "ok-x"})
    assert text == f"ACCESS_REFUSED - access to queue '{name}' in vhost '/' refused for user 'limited'"


def test_the_default_exchange_as_dead_letter_exchange_is_checked_as_amq_default(
    limited: pika.BlockingConnection,
) -> None:
    name = unique("ok-dlx-default")
    channel = limited.channel()
    channel.queue_declare(name, arguments={"x-dead-letter-exchange": ""})  # write matches amq.default
    channel.queue_delete(name)


def test_an_existing_queue_is_not_checked_again(
    limited: pika.BlockingConnection, guest: BlockingChannel
) -> None:
    name = unique("ok-existing")
    arguments = {"x-dead-letter-exchange": "forbidden-x"}
    guest.queue_declare(name, arguments=arguments)
    limited.channel().queue_declare(name, arguments=arguments)  # RabbitMQ checks only new queues
    guest.queue_delete(name)


def test_alternate_exchange_needs_write_on_it_and_read_on_the_exchange(
    limited: pika.BlockingConnection,
) -> None:
    name = unique("ok-ae")
    text = _refused(
        limited.channel().exchange_declare, name, "fanout", arguments={"alternate-exchange": "forbidden-x"}
    )
    assert text == "ACCESS_REFUSED - access to exchange 'forbidden-x' in vhost '/' refused for user 'limited'"
    unreadable = unique("unreadable-x")
    text = _refused(
        limited.channel().exchange_declare, unreadable, "fanout", arguments={"alternate-exchange": "ok-x"}
    )
    assert text == (
        f"ACCESS_REFUSED - access to exchange '{unreadable}' in vhost '/' refused for user 'limited'"
    )
    channel = limited.channel()
    channel.exchange_declare(name, "fanout", arguments={"alternate-exchange": "ok-x"})
    channel.exchange_delete(name)


def test_write_is_checked_before_the_exchange_exists(limited: pika.BlockingConnection) -> None:
    channel = limited.channel()
    channel.confirm_delivery()
    text = _refused(channel.basic_publish, "no-such-exchange", "k", b"x")
    assert text == (
        "ACCESS_REFUSED - access to exchange 'no-such-exchange' in vhost '/' refused for user 'limited'"
    )


def test_server_named_queues_are_checked_under_their_name(secured: Broker) -> None:
    with pika_connection(_url(secured, NAMED)) as connection:
        text = _refused(connection.channel().queue_declare, "", exclusive=True)
    assert text.startswith("ACCESS_REFUSED - access to queue 'amq.gen-")
    assert text.endswith("' in vhost '/' refused for user 'named'")


def test_topic_permissions_check_the_routing_key_of_each_publish(limited: pika.BlockingConnection) -> None:
    channel = limited.channel()
    channel.confirm_delivery()
    for _ in range(2):  # the second time, after the exchange's write permission was cached
        channel.basic_publish("amq.topic", "limited.news", b"allowed")
    text = _refused(channel.basic_publish, "amq.topic", "other.news", b"refused")
    assert text == (
        "ACCESS_REFUSED - access to topic 'other.news' in exchange 'amq.topic' in vhost '/' "
        "refused for user 'limited'"
    )
    direct = limited.channel()
    direct.confirm_delivery()
    direct.basic_publish("amq.direct", "anything", b"topic permissions apply to topic exchanges only")


def test_topic_permissions_check_binding_keys(limited: pika.BlockingConnection) -> None:
    name = unique("ok-bound")
    channel = limited.channel()
    channel.queue_declare(name, exclusive=True)
    channel.queue_bind(name, "amq.topic", "limited.public.#")
    channel.queue_bind(name, "amq.direct", "anything")
    text = _refused(channel.queue_bind, name, "amq.topic", "limited.private.#")
    assert text == (
        "ACCESS_REFUSED - access to topic 'limited.private.#' in exchange 'amq.topic' in vhost '/' "
        "refused for user 'limited'"
    )
