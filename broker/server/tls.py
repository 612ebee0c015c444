"""The amqps listener's TLS: an ssl.SSLContext built from the `tls` section, as RabbitMQ's ssl_options."""

from __future__ import annotations

import ssl

from leveret.broker.server.startup import StartError
from leveret.config.schema import Tls


class TlsSetupError(StartError):
    """A certificate, key or CA file that cannot be used: said once, at start, naming the setting."""


def server_context(tls: Tls) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RabbitMQ's default versions: 1.2 and 1.3
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile)
    except (OSError, ssl.SSLError) as error:
        raise TlsSetupError(f"tls.certfile / tls.keyfile: cannot load {tls.certfile} with {tls.keyfile}: "
                            f"{error}") from error
    if tls.cacertfile:
        try:
            context.load_verify_locations(tls.cacertfile)
        except (OSError, ssl.SSLError) as error:
            raise TlsSetupError(f"tls.cacertfile: cannot load {tls.cacertfile}: {error}") from error
    if tls.verify == "verify_peer":
        # Without fail_if_no_peer_cert, RabbitMQ verifies a certificate the client sends but needs none.
        context.verify_mode = ssl.CERT_REQUIRED if tls.fail_if_no_peer_cert else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context
