"""Accept AMQP clients on the configured addresses (plain, and over TLS); one ConnectionTask each."""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Sequence

import trio

from leveret.broker.node import Node
from leveret.broker.server.connection_task import handle_client
from leveret.broker.server.startup import ListenerSetting, open_listeners

log = logging.getLogger(__name__)

AMQP_LISTENER = ListenerSetting("AMQP", "listeners.amqp")


async def serve_amqp(
    node: Node,
    hosts: str | Sequence[str],
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve AMQP on `port` of each of `hosts` (see startup.open_listeners), over TLS when `ssl_context` is
    given (the TLS handshake happens in each connection's task, within its handshake timeout)."""
    listeners = await open_listeners(AMQP_LISTENER, hosts, port)
    await serve_amqp_on(node, listeners, ssl_context, task_status=task_status)


async def serve_amqp_on(
    node: Node,
    listeners: list[trio.SocketListener],
    ssl_context: ssl.SSLContext | None = None,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve AMQP on listeners already bound (as `run_node` binds them before it opens the store)."""
    for listener in listeners:
        address = listener.socket.getsockname()
        kind = "TLS (SSL)" if ssl_context else "TCP"
        log.info("started %s listener on %s", kind, _address(address))
    task_status.started(listeners)
    serving: list[trio.abc.Listener[trio.abc.Stream]] = list(listeners)
    if ssl_context is not None:
        serving = [trio.SSLListener(listener, ssl_context, https_compatible=False) for listener in listeners]
    await trio.serve_listeners(functools.partial(handle_client, node), serving)


def _address(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    return f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
