"""Which process opened a loopback TCP connection: how a proxy tells one node's etcd client from another's.

Every node of a cluster must list the same etcd endpoints (they are part of the cluster's identity, which
peer links compare), so one proxy per etcd member serves every node, and a rule for one node finds its
connections by the process that owns the client end (`/proc/net/tcp`, then `/proc/PID/fd`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable


def _hex_address(host: str, port: int) -> str:
    """An IPv4 address as /proc/net/tcp writes it: the address in host byte order, then the port."""
    packed = socket.inet_aton(host)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def socket_inode(local: tuple[str, int]) -> int | None:
    """The inode of the TCP socket whose local end is `local` (IPv4)."""
    wanted = _hex_address(*local)
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == wanted and fields[9] != "0":
                return int(fields[9])
    return None


def owner_pid(local: tuple[str, int], candidates: list[int]) -> int | None:
    """Which of `candidates` holds the socket whose local end is `local`."""
    inode = socket_inode(local)
    if inode is None:
        return None
    link = f"socket:[{inode}]"
    for pid in candidates:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def tagger(processes: Callable[[], dict[int, str]]) -> Callable[[tuple[str, int]], str | None]:
    """A proxy's `tag_of`: the name `processes()` (pid -> name, read at each connection) gives the
    process that opened the connection."""

    def tag_of(peer: tuple[str, int]) -> str | None:
        current = processes()
        pid = owner_pid((peer[0], peer[1]), list(current))
        return None if pid is None else current[pid]

    return tag_of
