"""Peer links of several in-process nodes on loopback, and a TCP proxy that can be paused or cut."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from leveret.broker.server.peers import PeerLinks


async def listen() -> tuple[trio.SocketListener, int]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return listeners[0], listeners[0].socket.getsockname()[1]


@dataclass
class Node:
    """One node's PeerLinks, run in a scope of its own so that it can be killed (every socket closed)."""

    links: PeerLinks
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    async def _run(self, listener: trio.SocketListener, *, task_status: Any) -> None:
        with self.scope:
            await self.links.run([listener], task_status=task_status)
            await trio.sleep_forever()

    def kill(self) -> None:
        self.scope.cancel()


async def start_node(
    nursery: trio.Nursery,
    name: str,
    addresses: dict[str, tuple[str, int]],
    listener: trio.SocketListener,
    **options: Any,
) -> Node:
    options.setdefault("connect_timeout", 1.0)
    options.setdefault("peer_timeout", 1.0)
    node = Node(PeerLinks(name, "test-cluster", addresses, **options))
    await nursery.start(node._run, listener)
    return node


async def wait_up(*nodes: Node) -> None:
    with trio.fail_after(10):
        while not all(link.up for node in nodes for link in node.links.links.values()):
            await trio.sleep(0.01)


class PausableProxy:
    """Forwards connections on its own port to `target`. `pause` stops moving bytes (a silent network),
    `cut` closes every connection it carries; `resume` lets bytes and new connections through again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._running = trio.Event()
        self._running.set()
        self._scopes: list[trio.CancelScope] = []

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listener, self.port = await listen()
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                client = await listener.accept()
                nursery.start_soon(self._carry, client)

    async def _carry(self, client: trio.SocketStream) -> None:
        scope = trio.CancelScope()
        self._scopes.append(scope)
        with scope:
            await self._running.wait()
            async with client, await trio.open_tcp_stream(*self.target) as server:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, server)
                    nursery.start_soon(self._pump, server, client)
        self._scopes.remove(scope)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while data := await source.receive_some(65536):
                await self._running.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await sink.aclose()

    def pause(self) -> None:
        self._running = trio.Event()

    def resume(self) -> None:
        self._running.set()

    def cut(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()
