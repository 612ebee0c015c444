"""The broker's log about its clients, checked line by line on both brokers: connections accepted, named,
opened and closed, refused logins, channel and connection errors, each at RabbitMQ's level.

RabbitMQ breaks some records over two lines, each with the record's prefix ("... [error] <0.690.0> "),
so every pattern here matches within one line of either broker's log.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

import pika
import pytest

from interop.brokers import Broker
from interop.clients import unique, wait_until


def wait_for_log(broker: Broker, pattern: str) -> None:
    """Until a line of the broker's log matches `pattern` (RabbitMQ writes its log a moment later)."""
    compiled = re.compile(pattern, re.MULTILINE)

    def found() -> bool:
        return compiled.search(broker.log_text()) is not None

    try:
        wait_until(found, timeout=10, what=pattern)
    except AssertionError:
        raise AssertionError(f"no log line matches {pattern!r}:\n{broker.log_text()[-4000:]}") from None


def named(broker: Broker, name: str, vhost: str = "/") -> pika.BlockingConnection:
    parameters = pika.URLParameters(broker.url.rstrip("/") + ("/" if vhost == "/" else f"/{vhost}"))
    parameters.client_properties = {"connection_name": name}
    return pika.BlockingConnection(parameters)


def test_a_connection_is_logged_from_accept_to_close(broker: Broker) -> None:
    name = unique("log-open")
    connection = named(broker, name)
    connection.channel()
    connection.close()
    wait_for_log(broker, r"\[info\] .*accepting AMQP connection .*\(127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+\)")
    wait_for_log(broker, rf"\[info\] .*connection .*\(127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+\) "
                         rf"has a client-provided name: {name}$")
    wait_for_log(broker, rf"\[info\] .*connection .*- {name}\): user 'guest' authenticated and granted "
                         r"access to vhost '/'$")
    wait_for_log(broker, rf"\[info\] .*closing AMQP connection .*- {name}, vhost: '/', user: 'guest'\)$")


def test_a_channel_error_is_logged_with_its_reply_code(broker: Broker) -> None:
    name, queue = unique("log-channel"), unique("missing")
    connection = named(broker, name)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            connection.channel().queue_declare(queue, passive=True)
    finally:
        connection.close()
    # RabbitMQ's channel names its connection without the client-provided name.
    wait_for_log(broker, r"\[error\] .*Channel error on connection .*\(127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+, "
                         r"vhost: '/', user: 'guest'\), channel 1:")
    wait_for_log(broker, rf"\[error\] .*operation queue\.declare caused a channel exception not_found: "
                         rf"no queue '{queue}' in vhost '/'$")


def test_a_connection_error_is_logged_with_its_reply_code(broker: Broker) -> None:
    name, exchange = unique("log-connection"), unique("x")
    connection = named(broker, name)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        connection.channel().exchange_declare(exchange, exchange_type="no-such-type")
    wait_for_log(broker, rf"\[error\] .*Error on AMQP connection .*- {name}, vhost: '/', user: 'guest', "
                         r"state: running\), channel 1:")
    wait_for_log(broker, r"\[error\] .*operation exchange\.declare caused a connection exception "
                         r"command_invalid: \"unknown exchange type 'no-such-type'\"$")


def test_a_refused_login_is_logged_with_its_reason(broker: Broker) -> None:
    user = unique("nobody")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as refused:
        pika.BlockingConnection(pika.URLParameters(broker.url.replace("guest:guest", f"{user}:secret")))
    # The client is pointed at the log, which says why.
    pointer = "Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    assert pointer in str(refused.value)
    wait_for_log(broker, r"\[error\] .*Error on AMQP connection .*\(127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+, "
                         r"state: starting\):")
    wait_for_log(broker, rf"\[error\] .*PLAIN login refused: user '{user}' - invalid credentials$")


def test_a_refused_vhost_is_logged(broker: Broker) -> None:
    vhost = unique("no-such-vhost")
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        named(broker, unique("log-vhost"), vhost=vhost)
    wait_for_log(broker, r"\[error\] .*Error on AMQP connection .*user: 'guest', state: opening\):")
    wait_for_log(broker, rf"\[error\] .*vhost {vhost} not found$")


def test_a_client_that_drops_its_socket_is_a_warning(broker: Broker) -> None:
    name = unique("log-drop")
    connection = named(broker, name)
    connection.channel()
    connection._impl._transport._sock.close()  # no connection.close: the socket just goes
    wait_for_log(broker, rf"\[warning\] .*closing AMQP connection .*- {name}, vhost: '/', user: 'guest'\)")
    wait_for_log(broker, r"\[warning\] .*client unexpectedly closed TCP connection$")


def test_missed_heartbeats_are_an_error(broker: Broker) -> None:
    name = unique("log-heartbeat")
    parameters = pika.URLParameters(broker.url)
    parameters.client_properties = {"connection_name": name}
    parameters.heartbeat = 1
    connection = pika.BlockingConnection(parameters)
    # A blocking connection answers no heartbeats while the test waits for the log.
    wait_for_log(broker, rf"\[error\] .*closing AMQP connection .*- {name}\):")
    wait_for_log(broker, r"\[error\] .*missed heartbeats from client, timeout: 1s$")
    with contextlib.suppress(pika.exceptions.AMQPError):
        connection.close()


def test_shutdown_logs_each_forced_connection(private_broker: Callable[..., Broker]) -> None:
    broker = private_broker()
    name = unique("log-shutdown")
    connection = named(broker, name)
    connection.channel()
    broker.stop()
    pattern = (
        rf"\[error\] .*Error on AMQP connection .*- {name}, vhost: '/', user: 'guest', state: running\), "
        r"channel 0:"
    )
    assert re.search(pattern, broker.log_text(), re.MULTILINE), broker.log_text()[-3000:]
    forced = (
        r"\[error\] .*operation none caused a connection exception connection_forced: "
        "\"broker forced connection closure with reason 'shutdown'\"$"
    )
    assert re.search(forced, broker.log_text(), re.MULTILINE), broker.log_text()[-3000:]
