"""The client log: what RabbitMQ's log says about each client connection, in its words and at its levels.

Connections accepted, named, opened and closed; refused logins; channel and connection errors with
their reply codes (RabbitMQ 3.10's rabbit_reader and rabbit_channel, checked against its log). Only
connection and channel lifecycle events and errors are logged, never anything per message. Each record
is one line (RabbitMQ breaks some in two) and carries the connection's details as `extra` fields, which
the JSON log format shows.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Protocol

from pamqp import commands

from leveret.amqp.connection import State
from leveret.amqp.constants import REPLY_TEXTS
from leveret.amqp.errors import AMQPError

if TYPE_CHECKING:
    from leveret.amqp.connection import ServerConnection
    from leveret.broker.vhost import VirtualHost


class ConnectionSession(Protocol):
    """What the log lines tell of a connection (broker/session/connection.py's, which imports this
    module)."""

    @property
    def peer(self) -> str: ...

    @property
    def local(self) -> str: ...

    @property
    def conn(self) -> ServerConnection: ...

    @property
    def username(self) -> str: ...

    @property
    def vhost(self) -> VirtualHost:
        """None until connection.open (typed as ConnectionSession types it)."""

log = logging.getLogger("leveret.connection")

# RabbitMQ's names for a connection's states, as its log reports them.
_STATES = {
    State.AWAIT_HEADER: "pre_init",
    State.AWAIT_START_OK: "starting",
    State.AWAIT_TUNE_OK: "tuning",
    State.AWAIT_OPEN: "opening",
    State.OPEN: "running",
    State.CLOSING: "closing",
    State.CLOSED: "closed",
}


def state_name(state: State) -> str:
    return _STATES[state]


def ends(session: ConnectionSession) -> str:
    """"peer -> local": how RabbitMQ's channels name their connection."""
    return f"{session.peer} -> {session.local}" if session.local else session.peer


def name(session: ConnectionSession) -> str:
    """RabbitMQ's connection name: "peer -> local", then " - " and the client-provided name if any."""
    provided = client_provided_name(session)
    return f"{ends(session)} - {provided}" if provided else ends(session)


def client_provided_name(session: ConnectionSession) -> str | None:
    provided = session.conn.client_properties.get("connection_name")
    return provided if isinstance(provided, str) and provided else None


def _fields(session: ConnectionSession, **more: Any) -> dict[str, Any]:
    """The `extra` of a record: the connection's details, for the JSON log."""
    fields: dict[str, Any] = {"connection": name(session)}
    if session.username:
        fields["user"] = session.username
    if session.vhost is not None:
        fields["vhost"] = session.vhost.name
    fields.update(more)
    return fields


def _client(properties: dict[str, Any]) -> dict[str, str]:
    """What the client says it is: product, version, platform (its other properties are mostly tables)."""
    return {key: str(properties[key]) for key in ("product", "version", "platform") if key in properties}


def _who(session: ConnectionSession, *, state: str | None = None, named: bool = True) -> str:
    """The parenthesis after a connection's name in RabbitMQ's lines: vhost and user as far as known."""
    parts = [name(session) if named else ends(session)]
    if session.vhost is not None:
        parts.append(f"vhost: '{session.vhost.name}'")
    elif session.username and state is None:
        parts.append("vhost: 'none'")
    if session.username:
        parts.append(f"user: '{session.username}'")
    if state is not None:
        parts.append(f"state: {state}")
    return ", ".join(parts)


def method_name(class_id: int, method_id: int) -> str:
    """RabbitMQ's name of a method: 'queue.declare' for (50, 10), 'basic.get_empty' for (60, 72); 'none'
    when no method caused the error."""
    method = commands.INDEX_MAPPING.get((class_id << 16) | method_id) if class_id else None
    if method is None:
        return "none"
    return re.sub(r"(?<=[a-z])([A-Z])", r"_\1", str(getattr(method, "name", ""))).lower()


def _exception(error: AMQPError, level: str) -> str:
    """'operation queue.declare caused a channel exception not_found: no queue ...'."""
    code = REPLY_TEXTS.get(error.code, str(error.code)).lower()
    # RabbitMQ prints a connection exception's text as an Erlang string, quoted.
    text = error.text if level == "channel" else f'"{error.text}"'
    method = method_name(error.class_id, error.method_id)
    return f"operation {method} caused a {level} exception {code}: {text}"


# ---- the events -------------------------------------------------------------------------------


def accepted(session: ConnectionSession) -> None:
    """The client sent its first bytes (a port probe that sends nothing is not logged)."""
    log.info("accepting AMQP connection (%s)", name(session), extra={"connection": name(session)})


def started(session: ConnectionSession) -> None:
    """connection.start-ok: the client's name, when it gave one, and what it is."""
    properties = session.conn.client_properties
    provided = client_provided_name(session)
    if provided:
        log.info("connection (%s) has a client-provided name: %s", ends(session), provided,
                 extra=_fields(session))
    if log.isEnabledFor(logging.DEBUG):
        log.debug("connection (%s): client properties %s", name(session), properties,
                  extra=_fields(session, client=_client(properties)))


def login_refused(session: ConnectionSession, mechanism: str, reason: str) -> None:
    log.error(
        "Error on AMQP connection (%s, state: starting): %s login refused: %s",
        name(session), mechanism, reason, extra=_fields(session, reply_code=403),
    )


def opened(session: ConnectionSession) -> None:
    properties = session.conn.client_properties
    log.info(
        "connection (%s): user '%s' authenticated and granted access to vhost '%s'",
        name(session), session.username, session.vhost.name,
        extra=_fields(session, client=_client(properties)),
    )


def channel_error(session: ConnectionSession, channel: int, error: AMQPError) -> None:
    log.error(
        "Channel error on connection (%s), channel %d: %s",
        _who(session, named=False), channel, _exception(error, "channel"),
        extra=_fields(session, channel=channel, reply_code=error.code, reply_text=error.reply_text),
    )


def connection_error(session: ConnectionSession, state: State, error: AMQPError, channel: int = 0) -> None:
    """An error that closes the connection. Before it is open, RabbitMQ logs only the explanation."""
    fields = _fields(session, channel=channel, reply_code=error.code, reply_text=error.reply_text)
    if state in (State.OPEN, State.CLOSING):
        log.error("Error on AMQP connection (%s), channel %d: %s", _who(session, state=state_name(state)),
                  channel, _exception(error, "connection"), extra=fields)
    else:
        log.error("Error on AMQP connection (%s): %s", _who(session, state=state_name(state)), error.text,
                  extra=fields)


def closed(session: ConnectionSession, *, level: int = logging.INFO, reason: str | None = None) -> None:
    """The connection is gone; `reason` says why when it did not close cleanly."""
    message = f"closing AMQP connection ({_who(session)})" + (f": {reason}" if reason else "")
    log.log(level, "%s", message, extra=_fields(session))


def dropped(session: ConnectionSession, reason: str) -> None:
    """The server dropped the connection (missed heartbeats, a handshake timeout, a foreign protocol):
    RabbitMQ names only the connection in these."""
    log.error("closing AMQP connection (%s): %s", name(session), reason, extra=_fields(session))


def bad_header(session: ConnectionSession, header: bytes) -> None:
    if header.startswith(b"GET ") or header.startswith(b"POST ") or header.startswith(b"HEAD "):
        why = "HTTP request detected on AMQP port. Ensure the client is connecting to the correct port."
    elif header[:1] == b"\x16" and header[1:2] == b"\x03":
        why = "TLS client detected on non-TLS AMQP port. Ensure the client is connecting to the correct port."
    else:
        why = f"client did not start with AMQP protocol header: {header!r}"
    dropped(session, why)
