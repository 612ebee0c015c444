"""Accept AMQP clients on the configured addresses (plain, and over TLS); one ConnectionTask each."""

from __future__ import annotations

import errno
import functools
import logging
import socket
import ssl
from collections.abc import Sequence

import trio

from leveret.broker.node import Node
from leveret.broker.server.connection_task import handle_client

log = logging.getLogger(__name__)


# Binding these fails when the machine lacks the address or its family (::1 with IPv6 disabled): such a
# host is skipped while another one of the list can be bound.
_UNAVAILABLE = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, socket.EAI_ADDRFAMILY, socket.EAI_NONAME)


def bind_host(host: str) -> str | None:
    """What trio binds for a configured host: "::" means every address of both families, as RabbitMQ's
    dual-stack default listener (trio's None: one socket per family); anything else is itself."""
    return None if host == "::" else host


async def open_listeners(hosts: str | Sequence[str], port: int) -> list[trio.SocketListener]:
    """Listeners on `port` of every host (one, or a list) that this machine has; OSError if none can be
    bound, or if one fails for another reason (the port is taken)."""
    listeners: list[trio.SocketListener] = []
    skipped: list[tuple[str, OSError]] = []
    for host in (hosts,) if isinstance(hosts, str) else hosts:
        try:
            listeners += await trio.open_tcp_listeners(port, host=bind_host(host))
        except (OSError, socket.gaierror) as error:
            if error.errno not in _UNAVAILABLE:
                for listener in listeners:
                    await listener.aclose()
                raise
            skipped.append((host, error))
    if not listeners:
        host, error = skipped[0]
        raise OSError(error.errno, f"cannot listen on {host} port {port}: {error.strerror}")
    for host, error in skipped:
        log.warning("not listening on %s port %d: %s (no such address on this machine)", host, port,
                    error.strerror)
    return listeners


async def serve_amqp(
    node: Node,
    hosts: str | Sequence[str],
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve AMQP on `port` of each of `hosts`, over TLS when `ssl_context` is given (the TLS handshake
    happens in each connection's task, within its handshake timeout)."""
    listeners = await open_listeners(hosts, port)
    for listener in listeners:
        address = listener.socket.getsockname()
        log.info("%s listener on %s", "AMQPS" if ssl_context else "AMQP", _address(address))
    task_status.started(listeners)
    serving: list[trio.abc.Listener[trio.abc.Stream]] = list(listeners)
    if ssl_context is not None:
        serving = [trio.SSLListener(listener, ssl_context, https_compatible=False) for listener in listeners]
    await trio.serve_listeners(functools.partial(handle_client, node), serving)


def _address(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    return f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
