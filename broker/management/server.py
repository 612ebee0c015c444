"""Serve the management API with hypercorn's trio worker on the management listener."""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Sequence

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from leveret.broker.management.app import build_app
from leveret.broker.node import Node

log = logging.getLogger(__name__)


async def serve_management(
    node: Node,
    hosts: str | Sequence[str],
    port: int,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve on `port` of each of `hosts` (one, or a list; "::" is both families, as for AMQP) until
    cancelled; `task_status` gets the bound addresses ("http://127.0.0.1:15672"), with the real port when
    `port` is 0."""
    config = HypercornConfig()
    config.bind = [f"fd://{fd}" for fd in _bound_sockets((hosts,) if isinstance(hosts, str) else hosts, port)]
    config.accesslog = None
    config.errorlog = log  # hypercorn's own errors go to Leveret's log, not stderr
    config.graceful_timeout = 1.0  # in-flight requests at shutdown; every answer here is immediate
    await serve(build_app(node), config, task_status=_LoggedStatus(task_status))


# The machine lacks the address or its family (::1 with IPv6 disabled): skipped while another host binds.
_UNAVAILABLE = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


def _bound_sockets(hosts: Sequence[str], port: int) -> list[int]:
    """A bound socket's descriptor for each host this machine has, for hypercorn to own ("fd://N"). "::"
    is one dual-stack socket (every address of both families). Without this, hypercorn would fail on the
    first missing address."""
    fds: list[int] = []
    skipped: list[tuple[str, OSError]] = []
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as error:
            if error.errno not in _UNAVAILABLE:
                raise
            skipped.append((host, error))
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
            sock.bind((host, port))
        except OSError as error:
            sock.close()
            if error.errno not in _UNAVAILABLE:
                for fd in fds:
                    os.close(fd)
                raise
            skipped.append((host, error))
            continue
        port = port or sock.getsockname()[1]  # port 0: every host on the one the first got
        fds.append(sock.detach())
    if not fds:
        host, error = skipped[0]
        raise OSError(error.errno, f"cannot listen on {host} port {port}: {error.strerror}")
    for host, error in skipped:
        log.warning("management API not listening on %s: %s", host, error.strerror)
    return fds


class _LoggedStatus:
    """Log the bound addresses, then pass them on to the caller's task status."""

    def __init__(self, task_status: trio.TaskStatus[list[str]]) -> None:
        self.task_status = task_status

    def started(self, binds: list[str]) -> None:
        for bind in binds:
            log.info("management API on %s", bind)
        self.task_status.started(binds)
