"""A TCP proxy on trio whose links can be paused, black-holed or cut, per direction and per client.

Each `FaultProxy` listens on a loopback port chosen at run time and forwards every connection to its
target. A direction is `up` (client to target) or `down` (target to client); its mode is:

- `pass`: bytes flow;
- `pause`: bytes are held (the proxy stops reading, so TCP pushes back) and flow again on `heal`, as
  through a router that stalled;
- `drop`: bytes are read and thrown away, the connections stay open: a DROP rule, as the sender sees it.

`cut()` resets every connection and refuses new ones until `heal()`. A rule may name a client (a tag from
`tag_of`, such as the node whose process opened the connection) or apply to all. The proxies of one
`ProxyHub` run on one trio loop in a background thread; the test drives them from its own thread.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

DIRECTIONS = ("up", "down")
Tagger = Callable[[tuple[str, int]], str | None]
T = TypeVar("T")


@dataclass(eq=False)
class _Link:
    tag: str | None
    client: trio.SocketStream
    server: trio.SocketStream
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)


class FaultProxy:
    def __init__(self, hub: ProxyHub, target: tuple[str, int], tag_of: Tagger | None, host: str) -> None:
        self.hub = hub
        self.host = host
        self.target = target
        self.tag_of = tag_of
        self.port = 0
        # (direction, tag or None for everyone) -> mode; "cut" under direction "both"
        self._rules: dict[tuple[str, str | None], str] = {}
        self._changed = trio.Event()
        self._links: set[_Link] = set()
        self.accepted = 0

    # -- control, from the test's thread ------------------------------------------------------------

    def pause(self, direction: str = "both", client: str | None = None) -> None:
        self._set(direction, client, "pause")

    def drop(self, direction: str = "both", client: str | None = None) -> None:
        self._set(direction, client, "drop")

    def cut(self, client: str | None = None) -> None:
        self._set("both", client, "cut")

    def heal(self) -> None:
        """Every rule gone: bytes flow again, held ones first."""
        self.hub.call(self._apply, None)

    def connections(self) -> int:
        return self.hub.call(lambda: len(self._links))

    def _set(self, direction: str, client: str | None, mode: str) -> None:
        directions = DIRECTIONS if direction == "both" else (direction,)
        assert all(d in DIRECTIONS for d in directions), direction
        self.hub.call(self._apply, [((d, client), mode) for d in directions])

    # -- on the proxy's loop ------------------------------------------------------------------------

    def _apply(self, rules: list[tuple[tuple[str, str | None], str]] | None) -> None:
        if rules is None:
            self._rules.clear()
        else:
            self._rules.update(rules)
        for link in list(self._links):
            if self._mode("up", link.tag) == "cut":
                _reset(link.client)
                link.cancel.cancel()
        self._changed.set()
        self._changed = trio.Event()

    def _mode(self, direction: str, tag: str | None) -> str:
        return self._rules.get((direction, tag)) or self._rules.get((direction, None)) or "pass"

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        peer = client.socket.getpeername()
        tag = await trio.to_thread.run_sync(self.tag_of, peer) if self.tag_of is not None else None
        if self._mode("up", tag) == "cut":
            _reset(client)
            return
        try:
            server = await trio.open_tcp_stream(*self.target)
        except OSError:
            _reset(client)
            return
        link = _Link(tag, client, server)
        self._links.add(link)
        try:
            with link.cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, link, "up", client, server, nursery.cancel_scope)
                    nursery.start_soon(self._pump, link, "down", server, client, nursery.cancel_scope)
        finally:
            self._links.discard(link)
            for stream in (client, server):
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    async def _pump(
        self,
        link: _Link,
        direction: str,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        done: trio.CancelScope,
    ) -> None:
        try:
            while True:
                while self._mode(direction, link.tag) == "pause":
                    await self._changed.wait()
                data = await source.receive_some(65536)
                if not data:
                    break
                while self._mode(direction, link.tag) == "pause":
                    await self._changed.wait()
                if self._mode(direction, link.tag) == "drop":
                    continue
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        # One side closed: end the whole link, as a TCP connection between the ends would.
        done.cancel()


def _reset(stream: trio.SocketStream) -> None:
    """Close with RST (SO_LINGER 0): the peer sees 'connection reset', as when a link dies."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()
    except OSError:
        pass


class ProxyHub:
    """A trio loop in a daemon thread hosting proxies; `close` ends it and every connection."""

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await trio.sleep_forever()

    def call(self, function: Callable[..., T], *args: object) -> T:
        return trio.from_thread.run_sync(function, *args, trio_token=self._token)

    def add(
        self, target: tuple[str, int], tag_of: Tagger | None = None, host: str = "127.0.0.1"
    ) -> FaultProxy:
        """A proxy to `target`, listening on `host` at a port chosen now (`.port`)."""

        async def start() -> FaultProxy:
            proxy = FaultProxy(self, target, tag_of, host)
            assert self._nursery is not None
            await self._nursery.start(proxy.serve)
            return proxy

        return trio.from_thread.run(start, trio_token=self._token)

    def close(self) -> None:
        if self._nursery is not None:
            trio.from_thread.run_sync(self._nursery.cancel_scope.cancel, trio_token=self._token)
        self._thread.join(timeout=5)
