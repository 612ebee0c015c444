"""AMQP over TLS (the amqps listener): real clients, certificates made for the run, on both brokers."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import aio_pika
import pika
import pytest

from interop.brokers import HOST, PROTOCOL_HEADER, Broker, ExtraUser, TlsSettings
from interop.clients import NODE_DIR, client_env, pika_connection, run_client, unique
from tests.certs import TlsFiles, make_tls_files


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def settings(
    certs: TlsFiles, *, verify_peer: bool = False, fail_if_no_peer_cert: bool = False
) -> TlsSettings:
    return TlsSettings(certs.server_cert, certs.server_key, certs.ca, verify_peer, fail_if_no_peer_cert)


def client_context(certs: TlsFiles, *, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))  # checks the server's certificate
    if with_certificate:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    return context


def tls_parameters(broker: Broker, context: ssl.SSLContext) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=HOST,
        port=broker.tls_port,
        credentials=pika.PlainCredentials("guest", "guest"),
        ssl_options=pika.SSLOptions(context, server_hostname="localhost"),
    )


def test_pika_publishes_and_consumes_over_tls_beside_plain_amqp(
    private_broker: Callable[..., Broker], certs: TlsFiles
) -> None:
    broker = private_broker(tls=settings(certs))
    name = unique("tls")
    secure = pika.BlockingConnection(tls_parameters(broker, client_context(certs, with_certificate=False)))
    try:
        channel = secure.channel()
        channel.queue_declare(name)
        channel.confirm_delivery()
        for index in range(100):
            channel.basic_publish("", name, f"secret {index}".encode())
        # The plain listener serves the same broker at the same time.
        with pika_connection(broker.url) as plain:
            method, _, body = plain.channel().basic_get(name, auto_ack=True)
            assert method is not None and body == b"secret 0"
        received = []
        for method, _, body in channel.consume(name, inactivity_timeout=5):
            assert method is not None, "deliveries stopped coming over TLS"
            received.append(body)
            channel.basic_ack(method.delivery_tag)
            if len(received) == 99:
                break
        assert received == [f"secret {index}".encode() for index in range(1, 100)]
    finally:
        secure.close()


def test_verify_peer_with_fail_if_no_peer_cert_refuses_clients_without_a_certificate(
    private_broker: Callable[..., Broker], certs: TlsFiles
) -> None:
    broker = private_broker(tls=settings(certs, verify_peer=True, fail_if_no_peer_cert=True))
    anonymous = tls_parameters(broker, client_context(certs, with_certificate=False))
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(anonymous).close()
    # A client certificate signed by the configured CA is let in.
    trusted = tls_parameters(broker, client_context(certs, with_certificate=True))
    with pika.BlockingConnection(trusted) as conn:
        assert conn.channel().queue_declare("", exclusive=True).method.queue


def test_aio_pika_round_trip_over_tls(private_broker: Callable[..., Broker], certs: TlsFiles) -> None:
    broker = private_broker(tls=settings(certs, verify_peer=True))

    async def round_trip() -> bytes:
        connection = await aio_pika.connect(
            host="localhost",
            port=broker.tls_port,
            login="guest",
            password="guest",
            ssl=True,
            ssl_context=client_context(certs, with_certificate=True),
        )
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(unique("tls-aio"), auto_delete=True)
            await channel.default_exchange.publish(aio_pika.Message(b"over tls"), routing_key=queue.name)
            message = await queue.get(timeout=5)
            await message.ack()
            return message.body

    # pytest runs in trio mode: aio-pika gets an asyncio loop of its own.
    assert asyncio.run(round_trip()) == b"over tls"


def test_plain_amqp_on_the_tls_port_is_dropped_and_the_broker_serves_on(
    private_broker: Callable[..., Broker], certs: TlsFiles
) -> None:
    broker = private_broker(tls=settings(certs))
    with socket.create_connection((HOST, broker.tls_port), timeout=10) as raw:
        raw.sendall(PROTOCOL_HEADER)
        answer = b""
        try:
            while chunk := raw.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    assert not answer.startswith(b"\x01\x00\x00")  # never a connection.start in the clear
    parameters = tls_parameters(broker, client_context(certs, with_certificate=False))
    with pika.BlockingConnection(parameters) as conn:
        assert conn.is_open


@pytest.mark.usefixtures("node_modules")
def test_node_amqplib_over_tls_with_a_client_certificate(
    private_broker: Callable[..., Broker], certs: TlsFiles, tmp_path: Path
) -> None:
    broker = private_broker(tls=settings(certs, verify_peer=True, fail_if_no_peer_cert=True))
    url = f"amqps://guest:guest@localhost:{broker.tls_port}/"
    script = ["node", str(NODE_DIR / "tls_round_trip.js"), unique("tls-node")]
    env = client_env(
        url, TLS_CA=str(certs.ca), TLS_CERT=str(certs.client_cert), TLS_KEY=str(certs.client_key)
    )
    assert run_client(script, tmp_path, env) == "got over tls\n"


def external_parameters(
    broker: Broker, certs: TlsFiles, *, with_certificate: bool
) -> pika.ConnectionParameters:
    context = client_context(certs, with_certificate=with_certificate)
    return pika.ConnectionParameters(
        host=HOST,
        port=broker.tls_port,
        credentials=pika.credentials.ExternalCredentials(),
        ssl_options=pika.SSLOptions(context, server_hostname="localhost"),
    )


EXTERNAL_REFUSED = (
    "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker "
    "logfile."
)


def test_external_logs_in_as_the_certificates_common_name(
    private_broker: Callable[..., Broker], certs: TlsFiles
) -> None:
    """RabbitMQ's rabbitmq_auth_mechanism_ssl with ssl_cert_login_from = common_name: the client
    certificate's CN, "guest", is the user; no password is sent."""
    tls = settings(certs, verify_peer=True)
    broker = private_broker(tls=TlsSettings(**{**vars(tls), "external_login_from": "common_name"}))
    with pika.BlockingConnection(external_parameters(broker, certs, with_certificate=True)) as conn:
        channel = conn.channel()
        name = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", name, b"by certificate")
        method, _, body = channel.basic_get(name, auto_ack=True)
        assert method is not None and body == b"by certificate"
    # Without a certificate there is no one to log in as.
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as refused:
        pika.BlockingConnection(external_parameters(broker, certs, with_certificate=False))
    assert EXTERNAL_REFUSED in str(refused.value)
    # EXTERNAL is offered on TLS connections only.
    plain = pika.ConnectionParameters(
        host=HOST, port=broker.port, credentials=pika.credentials.ExternalCredentials()
    )
    with pytest.raises(pika.exceptions.AuthenticationError, match="EXTERNAL"):  # pika: "not offered"
        pika.BlockingConnection(plain)


def test_external_logs_in_as_the_distinguished_name(
    private_broker: Callable[..., Broker], certs: TlsFiles
) -> None:
    """ssl_cert_login_from = distinguished_name (RabbitMQ's default): the user is the subject, "CN=guest"."""
    tls = settings(certs, verify_peer=True)
    external = TlsSettings(**{**vars(tls), "external_login_from": "distinguished_name"})
    broker = private_broker(tls=external, users=(ExtraUser("CN=guest", "unused"),))
    with pika.BlockingConnection(external_parameters(broker, certs, with_certificate=True)) as conn:
        assert conn.channel().queue_declare("", exclusive=True).method.queue


def test_external_needs_peer_verification(private_broker: Callable[..., Broker], certs: TlsFiles) -> None:
    """With verify_none RabbitMQ asks for no certificate and refuses EXTERNAL ("TLS configuration is unsafe"
    when one is sent anyway)."""
    unverified = TlsSettings(**{**vars(settings(certs)), "external_login_from": "common_name"})
    broker = private_broker(tls=unverified)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as refused:
        pika.BlockingConnection(external_parameters(broker, certs, with_certificate=True))
    assert EXTERNAL_REFUSED in str(refused.value)
