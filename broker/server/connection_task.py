"""The trio side of one client connection: read, hand bytes to the session, write what it queued.

A reader loop feeds the sans-IO session. What handling one read queues for any connection (its
own replies, deliveries to consumers elsewhere) is written when the read is handled, straight from
the reader: one write per connection, and no task switch between a publish and its delivery. What
the socket does not take at once, and output queued outside a reader (timers, confirms after an
fsync), goes to that connection's writer task, which sends it with `send_all`.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from typing import TypeAlias, cast

import trio

from leveret.broker.node import Node
from leveret.broker.session.connection import ConnectionSession

log = logging.getLogger(__name__)

READ_SIZE = 65536
# Output is taken from the session in pieces of about this size once a large body is queued: each piece is
# a copy, the body itself is never copied whole.
WRITE_CHUNK = 1024 * 1024
# How long to wait for connection.close-ok after sending connection.close.
CLOSE_TIMEOUT = 3.0


class _OutputBatch:
    """The connections given output while one reader handles what it received, written when it is done.

    Open only during that synchronous stretch (no await inside), so one batch serves every connection.
    """

    def __init__(self) -> None:
        self.open = False
        self.tasks: list[ConnectionTask] = []

    def __enter__(self) -> None:
        self.open = True

    def __exit__(self, *exc_info: object) -> None:
        self.open = False
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.write_now()


_batch = _OutputBatch()


def direct_writes() -> _OutputBatch:
    """For a synchronous stretch outside a reader that gives connections output (the group commit's
    confirms): each connection given output writes it once at the end, without a switch to its writer."""
    return _batch


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


# A plain TCP connection, or one over TLS (the amqps listener).
ClientStream: TypeAlias = trio.SocketStream | trio.SSLStream[trio.SocketStream]


class ConnectionTask:
    def __init__(self, node: Node, stream: ClientStream) -> None:
        self.node = node
        self.stream = stream
        # Over TLS, bytes go through the SSL object: no direct writes to the socket, the writer sends all.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        tcp = stream if isinstance(stream, trio.SocketStream) else stream.transport_stream
        peer = tcp.socket.getpeername()
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        self.session = ConnectionSession(node, f"{host}:{peer[1]}" if isinstance(peer, tuple) else host,
                                         from_loopback=_is_loopback(host))
        local = tcp.socket.getsockname()
        self.session.local = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else str(local)
        self.session.tls = self._socket is None
        if isinstance(stream, trio.SSLStream):
            self.session.peer_certificate = lambda: stream.getpeercert(binary_form=True)
        self.session.wake = self._wake
        self._wakeup = trio.Event()
        self._woken = False  # a write of the session's output is arranged (batch or writer)
        self._sending = False  # the writer is inside send_all
        self._unsent: bytes | memoryview = b""  # what a direct write left over, for the writer to send first
        self._drained = False  # the last read took all the socket had: wait for more before reading
        # The run's clock itself: its current_time is one call where trio.current_time() is three (it is
        # read on every read and write, for heartbeats).
        self._now = trio.lowlevel.current_clock().current_time
        self._last_received = self._last_sent = self._now()
        self._done = trio.Event()

    def _wake(self) -> None:
        if self._woken:
            return
        self._woken = True
        if _batch.open and self._socket is not None:
            _batch.tasks.append(self)
        else:
            self._wakeup.set()

    def write_now(self) -> None:
        """Write the session's output without waiting for the writer task: a non-blocking write of what
        the socket takes now; the rest, or everything while the writer is busy, is left to the writer."""
        if self._sending or self._unsent or self.session.conn.closed:
            self._wakeup.set()  # the writer keeps the order, and finishes a closed connection
            return
        data = self._take_output()
        if not data:
            return
        assert self._socket is not None  # only plain connections join a batch
        try:
            sent = os.write(self._socket.fileno(), data)
        except OSError:  # would block, or broken: the writer's send_all waits, or reports it
            sent = 0
        if sent:
            self._last_sent = self._now()
        if sent < len(data):
            self._unsent = memoryview(data)[sent:]
            self._wakeup.set()
        elif self.session.conn.has_output:  # the rest of a large body
            self._wakeup.set()
        self.session.output_left(len(data) - sent)

    def _take_output(self) -> bytes | memoryview:
        self._woken = False
        if self._unsent:
            data, self._unsent = self._unsent, b""
            return data
        return self.session.data_to_send(WRITE_CHUNK)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, nursery.cancel_scope)
                nursery.start_soon(self._timers)
                await self._reader()
                # The reader is done. Short of a close handshake (EOF, a broken socket, no close-ok in
                # time) nothing more will come: the connection is gone now, not after the writer's wait.
                if not self.session.conn.closed:
                    self.session.connection_lost()
                # Let the writer flush what is queued, then stop.
                self._wake()
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self._done.wait()
                nursery.cancel_scope.cancel()
        except Exception:
            log.exception("connection %s failed", self.session.peer)
        finally:
            self.session.connection_lost()
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await self.stream.aclose()

    async def _reader(self) -> None:
        session = self.session
        conn = session.conn
        while not conn.closed:
            if session.throttle.blocked:
                await self._until_unblocked()
                continue
            if session.waiting is not None:
                await self._until_cluster_done()
                continue
            data = await self._receive()
            if not data:
                return
            if not session.received_any:
                session.accepted()
            self._last_received = self._now()
            with _batch:
                session.receive_data(data)
                if conn.has_output:
                    self._wake()
            if session.finished and not conn.closed:
                # We sent connection.close: wait for close-ok, but not forever.
                with trio.move_on_after(CLOSE_TIMEOUT):
                    while not conn.closed:
                        try:
                            data = cast(bytes, await self.stream.receive_some(READ_SIZE))
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return
                        if not data:
                            return
                        session.receive_data(data)
                return

    async def _receive(self) -> bytes:
        """The next bytes from the client; b"" at EOF or when the socket is broken or closed.

        A plain socket is read straight: after a short read (it was drained) wait for it to become
        readable, then read once. trio's `receive_some` would first try a read that fails with EAGAIN
        (a syscall and an exception per message at a steady rate) before it waits. After a full read
        it yields once, as `receive_some` does, so a flat-out client cannot starve the other tasks.
        """
        sock = self._socket
        if sock is None:  # TLS: the SSL object reads the transport
            try:
                # Both stream kinds give bytes (recv, SSLObject.read); the framing hashes slices of it.
                return cast(bytes, await self.stream.receive_some(READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
        while True:
            fd = sock.fileno()
            if fd < 0:  # closed by our own timers (a missed heartbeat) while we waited elsewhere
                return b""
            try:
                if self._drained:
                    await trio.lowlevel.wait_readable(fd)
                else:
                    await trio.lowlevel.checkpoint()
                # Looked up after the wait: a socket closed meanwhile gives -1 (EBADF), never a reused fd.
                data = os.read(sock.fileno(), READ_SIZE)
            except BlockingIOError:  # nothing after all (a full read that ended exactly, a spurious wake-up)
                self._drained = True
                continue
            except (OSError, trio.ClosedResourceError):  # reset, or closed by our own timers
                return b""
            self._drained = len(data) < READ_SIZE
            return data

    async def _until_unblocked(self) -> None:
        """A publisher blocked by a resource alarm: read nothing until the alarms clear. What the client
        sends meanwhile waits in the socket, and, as RabbitMQ does, its heartbeats are not expected."""
        unblocked = trio.Event()
        self.session.throttle.on_unblocked = unblocked.set
        await unblocked.wait()
        self._last_received = self._now()
        with _batch:
            self.session.resume_input()  # which may block it again
            if self.session.conn.has_output:
                self._wake()

    async def _until_cluster_done(self) -> None:
        """A method waits for an etcd transaction (broker/cluster/hooks.py): read nothing more until it is
        answered, so a client that keeps sending cannot grow the input buffer meanwhile."""
        done = trio.Event()
        self.session.cluster_resumed = done.set
        if self.session.waiting is not None:
            await done.wait()
        self._last_received = self._now()

    async def _writer(self, cancel_scope: trio.CancelScope) -> None:
        session = self.session
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                # Drain fully: more may have been queued (a close-ok, say) while send_all was waiting.
                while data := self._take_output():
                    # In flight and still queued: what the connection's consumers draw on meanwhile.
                    session.output_left(len(data))
                    self._sending = True
                    await self.stream.send_all(data)
                    self._sending = False
                    self._last_sent = self._now()
                    session.output_left(0)
                if session.conn.closed:
                    self._done.set()
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._done.set()
            cancel_scope.cancel()

    async def _timers(self) -> None:
        """Handshake timeout, then heartbeats: send when idle, give up on a silent peer. A silent peer gets
        no graceful close: over TLS that would wait for it to finish the TLS handshake first."""
        conn = self.session.conn
        handshake_deadline = trio.current_time() + self.node.config.limits.handshake_timeout
        while self.session.vhost is None and not conn.closed:
            if trio.current_time() >= handshake_deadline:
                self.session.connection_lost(reason="handshake timeout")
                await trio.aclose_forcefully(self.stream)
                return
            await trio.sleep(0.25)
        interval = conn.heartbeat
        if not interval:
            await trio.sleep(math.inf)
        while not conn.closed:
            await trio.sleep(interval / 2)
            now = trio.current_time()
            waiting = self.session.throttle.blocked or self.session.waiting is not None
            if now - self._last_received > 2 * interval and not waiting:
                self.session.connection_lost(reason=f"missed heartbeats from client, timeout: {interval}s")
                await trio.aclose_forcefully(self.stream)
                return
            if now - self._last_sent >= interval / 2:
                conn.send_heartbeat()
                self._wake()


async def handle_client(node: Node, stream: ClientStream) -> None:
    await ConnectionTask(node, stream).run()
