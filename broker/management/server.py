"""Serve the management API with hypercorn's trio worker on the management listener."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from leveret.broker.management.app import build_app
from leveret.broker.management.rates import MessageRates, run_sampler
from leveret.broker.node import Node

log = logging.getLogger(__name__)


def _hypercorn_config() -> HypercornConfig:
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = log  # hypercorn's own errors go to Leveret's log, not stderr
    config.graceful_timeout = 1.0  # in-flight requests at shutdown; every answer here is immediate
    return config


def bind_management(host: str, port: int) -> list[socket.socket]:
    """The management listener's sockets on one host, bound and listening (OSError when the address is
    taken or missing), so that `run_node` can bind every listener before it opens the store. "::" is one
    dual-stack socket: every address of both families, as for AMQP."""
    config = _hypercorn_config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    sockets = config.create_sockets().insecure_sockets
    for sock in sockets:
        sock.listen(config.backlog)
    return sockets


async def serve_management(
    node: Node,
    hosts: str | Sequence[str],
    port: int,
    *,
    sockets: list[socket.socket] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled, on `sockets` from `bind_management` or else on `port` of each of `hosts` (one,
    or a list); `task_status` gets the bound addresses ("http://127.0.0.1:15672"), with the real port when
    `port` is 0."""
    if sockets is None:
        sockets = [sock for host in ((hosts,) if isinstance(hosts, str) else hosts)
                   for sock in bind_management(host, port)]
    config = _hypercorn_config()
    # hypercorn's ASGI and task-status types are its own; Starlette's app and a duck-typed status fit them.
    rates = MessageRates(node, trio.current_time)
    app = wrap_app(build_app(node, rates), config.wsgi_max_body_size, None)  # type: ignore[arg-type]
    bound = Sockets([], sockets, [])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_sampler, rates)
        await worker_serve(app, config, sockets=bound, task_status=_LoggedStatus(task_status))  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


class _LoggedStatus:
    """Log the bound addresses, then pass them on to the caller's task status."""

    def __init__(self, task_status: trio.TaskStatus[list[str]]) -> None:
        self.task_status = task_status

    def started(self, binds: list[str]) -> None:
        for bind in binds:
            log.info("management API on %s", bind)
        self.task_status.started(binds)
