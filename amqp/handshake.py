"""Connection negotiation pieces: server properties, SASL responses, tune arithmetic."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

from pamqp import decode

from .constants import (
    ACCESS_REFUSED,
    DEFAULT_CHANNEL_MAX,
    DEFAULT_FRAME_MAX,
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_MESSAGE_SIZE,
    MIN_FRAME_MAX,
    NOT_ALLOWED,
)
from .errors import ConnectionLevelError

MECHANISMS = ("PLAIN", "AMQPLAIN")  # the ones whose response carries a username and password
EXTERNAL = "EXTERNAL"  # the TLS client certificate names the user; the response is not read

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the server offers in connection.start and connection.tune."""

    channel_max: int = DEFAULT_CHANNEL_MAX
    frame_max: int = DEFAULT_FRAME_MAX
    heartbeat: int = DEFAULT_HEARTBEAT
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    product: str = "Leveret"
    version: str = "0.1.0"
    cluster_name: str = "leveret"
    extra_properties: dict[str, Any] = field(default_factory=dict)

    def server_properties(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "version": self.version,
            "platform": "Python/trio",
            "cluster_name": self.cluster_name,
            "copyright": "Leveret contributors",
            "information": "Licensed under the MIT license",
            "capabilities": dict(CAPABILITIES),
            **self.extra_properties,
        }


class ConnectionPolicy(Protocol):
    """The broker's decisions during the handshake, for one connection."""

    def mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms connection.start offers."""

    def external_username(self) -> str | None:
        """For EXTERNAL: the username the connection's client certificate gives; None if it gives none."""

    def authenticate(self, mechanism: str, username: str, password: str) -> bool: ...

    def check_vhost(self, username: str, vhost: str) -> None:
        """Raise ConnectionLevelError(530, ...) when the user may not open the vhost."""


def parse_sasl_response(mechanism: str, response: bytes | str) -> tuple[str, str]:
    """(username, password) from a PLAIN or AMQPLAIN response; EXTERNAL's response is not read."""
    if mechanism == EXTERNAL:
        return "", ""
    raw = response.encode("utf-8", "surrogateescape") if isinstance(response, str) else response
    if mechanism == "PLAIN":
        parts = raw.split(b"\x00")
        if len(parts) != 3:
            raise ConnectionLevelError(ACCESS_REFUSED, "malformed PLAIN response")
        return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
    if mechanism == "AMQPLAIN":
        try:
            _, table = decode.field_table(struct.pack(">I", len(raw)) + raw)
        except Exception as exc:  # pamqp raises several types on a malformed table
            raise ConnectionLevelError(ACCESS_REFUSED, "malformed AMQPLAIN response") from exc
        login, password = table.get("LOGIN"), table.get("PASSWORD")
        if not isinstance(login, str) or not isinstance(password, str):
            raise ConnectionLevelError(ACCESS_REFUSED, "AMQPLAIN response needs LOGIN and PASSWORD")
        return login, password
    raise ConnectionLevelError(
        ACCESS_REFUSED,
        f"unsupported authentication mechanism '{mechanism}'; use one of {', '.join(MECHANISMS)}",
    )


# The highest channel number the protocol allows (a 16-bit field): what channel_max 0 stands for.
PROTOCOL_CHANNEL_MAX = 65535


def negotiate(offered: int, requested: int) -> int:
    """AMQP tune rule: 0 means 'no limit', otherwise the lower value wins."""
    if offered == 0:
        return requested
    if requested == 0:
        return offered
    return min(offered, requested)


def check_tune_ok(settings: ServerSettings, channel_max: int, frame_max: int) -> None:
    """RabbitMQ's rule (rabbit_reader): what the client answers must lie within what the server offered,
    and 0 ("no limit") is within only an offer of 0. Refusals are 530 NOT_ALLOWED, naming connection.tune."""
    _check_negotiated("frame_max", MIN_FRAME_MAX, settings.frame_max, frame_max)
    _check_negotiated("channel_max", 1, settings.channel_max, channel_max)


def _check_negotiated(field: str, minimum: int, offered: int, answered: int) -> None:
    detail = " (no limit)" if field == "channel_max" and answered == 0 else ""
    if answered and answered < minimum:
        bound = f"lower than the minimum allowed value ({minimum})"
    elif offered and (answered == 0 or answered > offered):
        bound = f"higher than the maximum allowed value ({offered})"
    else:
        return
    raise ConnectionLevelError(NOT_ALLOWED, f"negotiated {field} = {answered}{detail} is {bound}", 10, 30)


def negotiated_channel_max(offered: int, answered: int) -> int:
    """The highest channel number allowed: 0 on both sides means no limit below the protocol's."""
    return negotiate(offered, answered) or PROTOCOL_CHANNEL_MAX
