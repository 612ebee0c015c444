"""TLS set-up and the amqps listener in process: certificate errors, the handshake, silent clients."""

from __future__ import annotations

import datetime
import ssl
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pamqp.commands import Channel

from interop.brokers import free_port
from leveret.broker.auth import certificate_login_name
from leveret.broker.node import Node
from leveret.broker.server.listener import serve_amqp
from leveret.broker.server.tls import TlsSetupError, server_context
from leveret.config import Config
from leveret.config.schema import Tls
from tests.certs import TlsFiles, make_tls_files
from tests.trio_client import TrioClient


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def tls_config(certs: TlsFiles, **changes: object) -> Tls:
    return replace(Tls(str(certs.server_cert), str(certs.server_key), str(certs.ca)), **changes)


def test_verify_settings_map_to_rabbitmq_semantics(certs: TlsFiles) -> None:
    assert server_context(tls_config(certs)).verify_mode == ssl.CERT_NONE
    assert server_context(tls_config(certs, verify="verify_peer")).verify_mode == ssl.CERT_OPTIONAL
    strict = tls_config(certs, verify="verify_peer", fail_if_no_peer_cert=True)
    assert server_context(strict).verify_mode == ssl.CERT_REQUIRED


def test_unusable_files_name_the_setting(certs: TlsFiles, tmp_path: Path) -> None:
    with pytest.raises(TlsSetupError, match="tls.certfile / tls.keyfile: cannot load"):
        server_context(tls_config(certs, certfile=str(tmp_path / "missing.pem")))
    with pytest.raises(TlsSetupError, match="tls.certfile / tls.keyfile"):
        server_context(tls_config(certs, keyfile=str(certs.client_key)))  # not the certificate's key
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TlsSetupError, match="tls.cacertfile: cannot load"):
        server_context(tls_config(certs, cacertfile=str(garbage)))


def test_the_broker_refuses_to_start_with_a_bad_certificate(certs: TlsFiles, tmp_path: Path) -> None:
    config = tmp_path / "leveret.yaml"
    config.write_text(
        f"listeners: {{amqp: {{port: {free_port()}}}, amqps: {{port: {free_port()}}}}}\n"
        f"tls: {{certfile: {tmp_path / 'missing.pem'}, keyfile: {certs.server_key}}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "leveret", "--config", str(config), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "tls.certfile / tls.keyfile: cannot load" in result.stderr


async def start_tls_server(nursery: trio.Nursery, certs: TlsFiles, config: Config | None = None) -> int:
    context = server_context(tls_config(certs))
    listeners = await nursery.start(serve_amqp, Node(config or Config()), "127.0.0.1", 0, context)
    return listeners[0].socket.getsockname()[1]


async def test_handshake_over_tls(certs: TlsFiles) -> None:
    async with trio.open_nursery() as nursery:
        port = await start_tls_server(nursery, certs)
        client_context = ssl.create_default_context(cafile=str(certs.ca))
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=client_context)
        client = TrioClient(stream)
        await client.handshake()
        await client.send(1, Channel.Open())
        assert isinstance(await client.receive(), Channel.OpenOk)
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_client_that_never_starts_tls_is_dropped_at_the_handshake_timeout(certs: TlsFiles) -> None:
    config = Config()
    config = replace(config, limits=replace(config.limits, handshake_timeout=0.5))
    async with trio.open_nursery() as nursery:
        port = await start_tls_server(nursery, certs, config)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(3):
            assert await stream.receive_some(100) == b""
        nursery.cancel_scope.cancel()


def _certificate(*attributes: tuple[x509.ObjectIdentifier, str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def test_external_login_names_are_rabbitmqs() -> None:
    """rabbit_ssl:peer_cert_auth_name: the subject most specific first (RFC 4514), or the CNs joined."""
    der = _certificate((NameOID.COUNTRY_NAME, "FR"), (NameOID.ORGANIZATION_NAME, "Example, Inc"),
                       (NameOID.COMMON_NAME, "alice"))
    assert certificate_login_name(der, "distinguished_name") == "CN=alice,O=Example\\, Inc,C=FR"
    assert certificate_login_name(der, "common_name") == "alice"
    two = _certificate((NameOID.COMMON_NAME, "a"), (NameOID.COMMON_NAME, "b"))
    assert certificate_login_name(two, "common_name") == "a,b"
    assert certificate_login_name(_certificate((NameOID.ORGANIZATION_NAME, "x")), "common_name") is None
    assert certificate_login_name(b"not a certificate", "common_name") is None
