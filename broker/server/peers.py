"""Peer links: one TCP connection per pair of nodes, carrying requests and their acknowledgements.

The node whose name sorts first dials (`peer` address of the other's entry); the other accepts. A link
outlives its connections: a broken one (EOF, reset, nothing heard for `peer_timeout`) fails the requests
in flight on it with PeerLinkDown, and the dialer connects again with a backoff growing to a second.

- `handle(kind, handler)` registers what answers a kind of request: `handler(source_node, payload)`
  returns the reply payload (or an awaitable of it); raising refuses the request. One reader per link
  calls the handlers in turn, so requests are handled, and answered, in the order they were sent.
- `submit(node, kind, payload)` queues a request and returns a `PendingReply`; it waits while the link
  has `window_bytes` of requests unanswered (backpressure: a slow peer slows its senders, it never makes
  memory grow) and, up to `peer_connect_timeout`, for the link to be up. `request` is submit + wait.
- Whatever is queued while the writer is busy goes out in one write when it is free: a batch of
  requests is flushed once, as on the client path.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from leveret.broker.cluster.peer_protocol import (
    HEARTBEAT_FRAME,
    Frame,
    FrameDecoder,
    Hello,
    PeerProtocolError,
    PeerVersionMismatch,
    Reply,
    Request,
    check_hello,
    encode_hello,
    encode_reply,
    encode_request,
)
from leveret.config import Cluster
from leveret.config.cluster import split_address

log = logging.getLogger(__name__)



class Deferred:
    """A handler's answer that comes later: the reader goes on with the next request meanwhile, and the
    reply is sent when `wait` returns (raising refuses the request). Replies may then overtake it."""

    def __init__(self, wait: Callable[[], Awaitable[bytes]]) -> None:
        self.wait = wait


Handler = Callable[[str, bytes], bytes | Awaitable[bytes] | Deferred]

READ_SIZE = 65536
# Bytes of requests a link may have unanswered before `submit` waits.
WINDOW_BYTES = 8 * 1024 * 1024
_MAX_BACKOFF = 1.0
_FIRST_BACKOFF = 0.05


class PeerError(Exception):
    pass


class PeerUnavailable(PeerError):
    """The link to that node is not up (and did not come up within peer_connect_timeout)."""


class PeerLinkDown(PeerError):
    """The connection carrying the request broke before its reply came: it may or may not have been
    handled by the other node."""


class PeerRefused(PeerError):
    """The other node's handler refused the request (its text is the reason)."""


def cluster_identity(config: Cluster) -> str:
    """What both ends of a link must agree on: the etcd prefix and endpoints the cluster lives in."""
    text = config.etcd.prefix + "|" + ",".join(sorted(config.etcd.endpoints))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def peer_address(config: Cluster) -> tuple[str, int]:
    """Where this node accepts its links: the `peer` address of its entry."""
    parsed = split_address(config.this_node.peer)
    assert parsed is not None  # validated with the configuration
    return parsed


class PendingReply:
    def __init__(self, link: PeerLink, size: int) -> None:
        self._link = link
        self._size = size
        self._done = trio.Event()
        self.payload = b""
        self.error: PeerError | None = None

    def _finish(self, payload: bytes = b"", error: PeerError | None = None) -> None:
        if self._done.is_set():
            return
        self.payload, self.error = payload, error
        self._link._release(self._size)
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> bytes:
        await self._done.wait()
        if self.error is not None:
            raise self.error
        return self.payload


class _Connection:
    """One TCP connection of a link, while it lasts."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.outbox: list[bytes] = []
        self.wakeup = trio.Event()
        self.in_flight: dict[int, PendingReply] = {}
        self.cancel = trio.CancelScope()
        self.nursery: trio.Nursery | None = None  # where deferred replies wait

    def queue(self, frame: bytes) -> None:
        self.outbox.append(frame)
        self.wakeup.set()


@dataclass
class LinkStats:
    connects: int = 0
    sent_bytes: int = 0
    received_bytes: int = 0
    requests_sent: int = 0
    requests_handled: int = 0


class PeerLink:
    """This node's link to one other node."""

    def __init__(self, links: PeerLinks, node: str, address: tuple[str, int]) -> None:
        self.links = links
        self.node = node
        self.address = address
        self.dials = links.name < node
        self.connection: _Connection | None = None
        self._up = trio.Event()
        self._space = trio.Event()
        self.unanswered_bytes = 0
        self.stats = LinkStats()
        self._next_id = 0

    @property
    def up(self) -> bool:
        return self.connection is not None

    def _release(self, size: int) -> None:
        self.unanswered_bytes -= size
        # Every sender waiting for room wakes and looks again (one Event per wait would wake only the
        # last to wait: the others would wait for ever).
        self._space.set()
        self._space = trio.Event()

    async def submit(self, kind: str, payload: bytes) -> PendingReply:
        frame_size = len(payload) + 64
        while self.unanswered_bytes > 0 and self.unanswered_bytes + frame_size > self.links.window_bytes:
            await self._space.wait()
        if self.connection is None:
            with trio.move_on_after(self.links.connect_timeout):
                await self._up.wait()
        connection = self.connection
        if connection is None:
            raise PeerUnavailable(f"no link to {self.node} at {self.address[0]}:{self.address[1]}")
        self._next_id += 1
        pending = PendingReply(self, frame_size)
        self.unanswered_bytes += frame_size
        connection.in_flight[self._next_id] = pending
        connection.queue(encode_request(self._next_id, kind, payload))
        self.stats.requests_sent += 1
        return pending

    # ---- a connection's life -------------------------------------------------------------------

    async def serve(self, stream: trio.SocketStream, early: bytes = b"") -> None:
        """Carry the link over `stream` (the handshake done) until it breaks; `early` is what the
        other end sent right behind its hello."""
        if self.connection is not None:  # the other end reconnected: its old connection is dead to it
            self.connection.cancel.cancel()
            while self.connection is not None:
                await trio.sleep(0)
        connection = _Connection(stream)
        self.connection = connection
        self.stats.connects += 1
        self._up.set()
        log.info("peer link to %s up", self.node)
        try:
            with connection.cancel:
                async with trio.open_nursery() as nursery:
                    connection.nursery = nursery
                    nursery.start_soon(self._write, connection, nursery.cancel_scope)
                    try:
                        await self._read(connection, early)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                        log.warning("peer link to %s broke: %s", self.node, error)
                    except PeerProtocolError as error:
                        log.error("peer link to %s: protocol error: %s", self.node, error)
                    nursery.cancel_scope.cancel()
        finally:
            if self.connection is connection:
                self.connection = None
                self._up = trio.Event()
            down = PeerLinkDown(f"link to {self.node} broke before the reply came")
            for pending in connection.in_flight.values():
                pending._finish(error=down)
            connection.in_flight.clear()
            self.links.link_down(self.node)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            log.info("peer link to %s down", self.node)

    async def _read(self, connection: _Connection, early: bytes = b"") -> None:
        decoder = FrameDecoder()
        if early:
            await self._handle_frames(connection, decoder.feed(early))
        timeout = self.links.peer_timeout
        while True:
            data = None
            started = trio.current_time()
            with trio.move_on_after(timeout):
                data = await connection.stream.receive_some(READ_SIZE)
            if data is None:
                log.warning("peer link to %s: nothing heard for %.1f s", self.node, timeout)
                return
            if trio.current_time() - started > timeout:
                # This process was paused (SIGSTOP) or starved past the timeout: the other end has given
                # this connection up meanwhile, and what it sent before (deliveries it has since given
                # to other consumers, settlements it failed) must not be acted on now. Dropped unread.
                log.warning("peer link to %s: a read came %.1f s late; dropping the connection",
                            self.node, trio.current_time() - started)
                return
            if not data:
                return
            self.stats.received_bytes += len(data)
            await self._handle_frames(connection, decoder.feed(data))

    async def _handle_frames(self, connection: _Connection, frames: list[Frame]) -> None:
        for frame in frames:
            if isinstance(frame, Request):
                await self._answer(connection, frame)
            elif isinstance(frame, Reply):
                pending = connection.in_flight.pop(frame.id, None)
                if pending is not None:
                    error = None if frame.ok else PeerRefused(frame.payload.decode(errors="replace"))
                    pending._finish(frame.payload, error)
            elif isinstance(frame, Hello):
                raise PeerProtocolError("a second hello")

    async def _answer(self, connection: _Connection, request: Request) -> None:
        handler = self.links.handlers.get(request.kind)
        self.stats.requests_handled += 1
        if handler is None:
            connection.queue(encode_reply(request.id, False, f"no handler for {request.kind!r}".encode()))
            return
        try:
            answer = handler(self.node, request.payload)
            if isinstance(answer, Deferred):
                assert connection.nursery is not None
                connection.nursery.start_soon(self._answer_later, connection, request.id, answer)
                return
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as error:  # the handler's refusal travels back; the link stays up
            connection.queue(encode_reply(request.id, False, str(error).encode()))
            return
        connection.queue(encode_reply(request.id, True, bytes(answer)))

    async def _answer_later(self, connection: _Connection, request_id: int, answer: Deferred) -> None:
        try:
            payload = await answer.wait()
        except Exception as error:
            connection.queue(encode_reply(request_id, False, str(error).encode()))
            return
        connection.queue(encode_reply(request_id, True, payload))

    async def _write(self, connection: _Connection, scope: trio.CancelScope) -> None:
        interval = self.links.peer_timeout / 3
        try:
            while True:
                with trio.move_on_after(interval):
                    await connection.wakeup.wait()
                connection.wakeup = trio.Event()
                if connection.outbox:
                    batch, connection.outbox = connection.outbox, []
                    data = b"".join(batch)  # one write per batch
                    del batch
                else:
                    data = HEARTBEAT_FRAME
                await connection.stream.send_all(data)
                self.stats.sent_bytes += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            log.warning("peer link to %s: write failed: %s", self.node, error)
            scope.cancel()


class PeerLinks:
    """Every link of this node, the listener for the links other nodes dial, and the handlers."""

    def __init__(
        self,
        name: str,
        cluster: str,
        addresses: dict[str, tuple[str, int]],
        *,
        connect_timeout: float = 2.0,
        peer_timeout: float = 3.0,
        window_bytes: int = WINDOW_BYTES,
    ) -> None:
        self.name = name
        self.cluster = cluster
        self.connect_timeout = connect_timeout
        self.peer_timeout = peer_timeout
        self.window_bytes = window_bytes
        self.handlers: dict[str, Handler] = {}
        # Called when a link's connection broke (what was in flight on it has failed already).
        self.link_down: Callable[[str], None] = lambda node: None
        self.links = {
            node: PeerLink(self, node, address) for node, address in addresses.items() if node != name
        }
        self._refused_versions: dict[str, int] = {}  # node -> the version its hello had, once logged

    @classmethod
    def from_config(cls, config: Cluster) -> PeerLinks:
        addresses = {}
        for node in config.nodes:
            parsed = split_address(node.peer)
            assert parsed is not None  # validated with the configuration
            addresses[node.name] = parsed
        assert config.node is not None
        return cls(
            config.node,
            cluster_identity(config),
            addresses,
            connect_timeout=config.peer_connect_timeout,
            peer_timeout=config.peer_timeout,
        )

    def handle(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    def link(self, node: str) -> PeerLink:
        try:
            return self.links[node]
        except KeyError:
            raise PeerUnavailable(f"no node {node!r} in the cluster") from None

    async def submit(self, node: str, kind: str, payload: bytes) -> PendingReply:
        return await self.link(node).submit(kind, payload)

    async def request(self, node: str, kind: str, payload: bytes) -> bytes:
        return await (await self.submit(node, kind, payload)).wait()

    def status(self) -> list[dict[str, Any]]:
        """Each link as the management API shows it (RabbitMQ's `cluster_links`)."""
        return [
            {
                "name": link.node,
                "peer_addr": link.address[0],
                "peer_port": link.address[1],
                "up": link.up,
                "send_bytes": link.stats.sent_bytes,
                "recv_bytes": link.stats.received_bytes,
                "connects": link.stats.connects,
            }
            for link in self.links.values()
        ]

    # ---- tasks ---------------------------------------------------------------------------------

    async def run(
        self, listeners: Iterable[trio.SocketListener], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept the links other nodes dial, and dial the others, until cancelled."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_on, listener, nursery)
            for link in self.links.values():
                if link.dials:
                    nursery.start_soon(self._dial, link)
            task_status.started()

    async def _accept_on(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._accepted, stream)

    async def _accepted(self, stream: trio.SocketStream) -> None:
        dialers = {name for name, link in self.links.items() if not link.dials}
        try:
            with trio.fail_after(self.connect_timeout):
                try:
                    hello, early = await _receive_hello(stream, self.cluster, dialers)
                except PeerVersionMismatch:
                    await stream.send_all(encode_hello(self.cluster, self.name))  # the dialer learns why
                    raise
                await stream.send_all(encode_hello(self.cluster, self.name))
        except PeerVersionMismatch as error:
            self._version_refused(error)
            await stream.aclose()
            return
        except (trio.TooSlowError, PeerProtocolError, trio.BrokenResourceError, OSError) as error:
            log.warning("peer connection refused: %s", error)
            await stream.aclose()
            return
        if early:  # a dialer waits for this node's hello before it sends anything else
            log.warning("peer %s spoke before the handshake finished", hello.node)
            await stream.aclose()
            return
        self._refused_versions.pop(hello.node, None)
        await self.links[hello.node].serve(stream)

    def _version_refused(self, error: PeerVersionMismatch) -> None:
        """Said once per node and version (its dialer tries again every second or so)."""
        if self._refused_versions.get(error.node) != error.theirs:
            self._refused_versions[error.node] = error.theirs
            log.error("peer link with %s refused: %s", error.node, error)

    async def _dial(self, link: PeerLink) -> None:
        backoff = _FIRST_BACKOFF
        while True:
            stream = None
            try:
                with trio.fail_after(self.connect_timeout):
                    stream = await trio.open_tcp_stream(*link.address)
                    await stream.send_all(encode_hello(self.cluster, self.name))
                    _, early = await _receive_hello(stream, self.cluster, link.node)
            except PeerVersionMismatch as error:
                self._version_refused(error)
                if stream is not None:
                    await stream.aclose()
                await trio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            except (trio.TooSlowError, PeerProtocolError, trio.BrokenResourceError, OSError) as error:
                log.debug("cannot link to %s: %s", link.node, error)
                if stream is not None:
                    await stream.aclose()
                await trio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = _FIRST_BACKOFF
            self._refused_versions.pop(link.node, None)
            # The accepting end may send requests right behind its hello: they are the link's first.
            await link.serve(stream, early)
            await trio.sleep(_FIRST_BACKOFF)


async def _receive_hello(
    stream: trio.SocketStream, cluster: str, expected: set[str] | str
) -> tuple[Hello, bytes]:
    """The other end's hello (checked), and the bytes that came right behind it."""
    decoder = FrameDecoder(max_frame=4096)  # bounds the hello only: what follows is not cut here
    while True:
        data = await stream.receive_some(4096)
        if not data:
            raise PeerProtocolError("closed during the handshake")
        frames = decoder.feed(data, limit=1)
        if frames:
            return check_hello(frames[0], cluster, expected), decoder.take_buffered()
