"""What a start needs before it may touch the store: the listening sockets and the data directory's lock.

Everything that can fail at start raises `StartError`, one line naming what failed, where, and the
setting that changes it; `leveret` prints it and exits. The listeners are bound before the store is
opened (`run_node`), so a start that cannot serve never takes the clean-shutdown marker.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import trio

log = logging.getLogger(__name__)


class StartError(Exception):
    """The broker cannot start: said once, in one line, with the setting (or flag) that changes it."""


def _reason(error: OSError) -> str:
    """'address already in use': the errno's text, as a clause."""
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


@dataclass(frozen=True)
class ListenerSetting:
    """A listener as the operator names it: what it serves, its config key, and its flags if any."""

    what: str  # "AMQP", "AMQPS", "the management API"
    key: str  # "listeners.amqp"
    host_flag: str | None = None
    port_flag: str | None = None

    def setting(self, field: str, flag: str | None) -> str:
        return f"{self.key}.{field}" + (f" ({flag})" if flag else "")


def cannot_listen(listener: ListenerSetting, host: str, port: int, error: OSError) -> StartError:
    """A listener that cannot be bound: the address, why, and the setting that moves it."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    port_setting = listener.setting("port", listener.port_flag)
    host_setting = listener.setting("host", listener.host_flag)
    if error.errno == errno.EADDRINUSE:
        hint = f"set another port with {port_setting}"
    elif error.errno == errno.EACCES:
        hint = f"ports below 1024 need privileges: set another port with {port_setting}"
    elif isinstance(error, socket.gaierror) or error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        hint = f"set another address with {host_setting}"
    else:
        hint = f"see {host_setting} and {port_setting}"
    return StartError(f"cannot listen for {listener.what} on {where}: {_reason(error)}; {hint}")


# Binding these fails when the machine lacks the address or its family (::1 with IPv6 disabled): such a
# host is skipped while another one of the list can be bound.
_UNAVAILABLE = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, socket.EAI_ADDRFAMILY, socket.EAI_NONAME)

Bound = TypeVar("Bound")


async def bind_hosts(
    listener: ListenerSetting,
    hosts: Sequence[str],
    port: int,
    bind: Callable[[str, int], Awaitable[list[Bound]]],
    close: Callable[[list[Bound]], None],
) -> list[Bound]:
    """`bind` each host on `port` (RabbitMQ's listeners.tcp.N: one port, several addresses). A host this
    machine lacks is skipped, with a warning, while another one binds; any other failure, or none bound,
    raises StartError naming the host (what was bound is closed first)."""
    bound: list[Bound] = []
    skipped: list[tuple[str, OSError]] = []
    for host in hosts:
        try:
            bound += await bind(host, port)
        except OSError as error:
            if error.errno not in _UNAVAILABLE:
                close(bound)
                raise cannot_listen(listener, host, port, error) from None
            skipped.append((host, error))
    if not bound:
        missing, failure = skipped[0]
        raise cannot_listen(listener, missing, port, failure)
    for missing, failure in skipped:
        log.warning("not listening for %s on %s port %d: %s (this machine has no such address)",
                    listener.what, missing, port, _reason(failure))
    return bound


def bind_host(host: str) -> str | None:
    """What trio binds for a configured host: "::" means every address of both families, as RabbitMQ's
    dual-stack default listener (trio's None: one socket per family); anything else is itself."""
    return None if host == "::" else host


async def _open_tcp(host: str, port: int) -> list[trio.SocketListener]:
    return await trio.open_tcp_listeners(port, host=bind_host(host))


def _close_listeners(listeners: list[trio.SocketListener]) -> None:
    for listener in listeners:
        listener.socket.close()


async def open_listeners(
    listener: ListenerSetting, hosts: str | Sequence[str], port: int
) -> list[trio.SocketListener]:
    """Bind and listen on `port` of each host (one, or a list; see bind_hosts), or raise StartError."""
    return await bind_hosts(
        listener, (hosts,) if isinstance(hosts, str) else hosts, port, _open_tcp, _close_listeners
    )


def cannot_use_data_dir(directory: str, error: OSError) -> StartError:
    path = f" ({error.filename})" if error.filename and os.fspath(error.filename) != directory else ""
    # mkdir on an existing file says "file exists"
    reason = "it is a file, not a directory" if isinstance(error, FileExistsError) else _reason(error)
    return StartError(
        f"cannot use the data directory {directory}{path}: {reason}; "
        "set another directory with data_dir (--data-dir)"
    )


LOCK_FILE = "leveret.lock"


def lock_data_dir(directory: str) -> IO[str]:
    """Hold the data directory for this process (released when it exits, even on a crash): a second
    broker on the same directory would interleave its appends with ours."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        handle = open(Path(directory) / LOCK_FILE, "a+", encoding="ascii")  # noqa: SIM115 (held until exit)
    except OSError as error:
        raise cannot_use_data_dir(directory, error) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise StartError(
            f"the data directory {directory} is in use by another broker (pid {holder}); "
            "stop it, or set another directory with data_dir (--data-dir)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
