"""Accept AMQP clients on the configured address; one ConnectionTask each."""

from __future__ import annotations

import functools
import logging

import trio

from leveret.broker.node import Node
from leveret.broker.server.connection_task import handle_client

log = logging.getLogger(__name__)


async def serve_amqp(
    node: Node,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    for listener in listeners:
        address = listener.socket.getsockname()
        log.info("AMQP listener on %s:%s", address[0], address[1])
    task_status.started(listeners)
    await trio.serve_listeners(functools.partial(handle_client, node), listeners)
