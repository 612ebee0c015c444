"""Peer links between in-process nodes over loopback: exchange, order, cuts, backpressure."""

from __future__ import annotations

import time

import pytest
import trio

from leveret.broker.cluster.peer_protocol import encode_request
from leveret.broker.server.peers import (
    PeerLinkDown,
    PeerLinks,
    PeerRefused,
    PeerUnavailable,
    _Connection,
)
from tests.peer_support import PausableProxy, listen, start_node, wait_up

NAMES = ["node1", "node2", "node3"]


async def _listeners(count: int) -> tuple[list[trio.SocketListener], dict[str, tuple[str, int]]]:
    listeners, addresses = [], {}
    for name in NAMES[:count]:
        listener, port = await listen()
        listeners.append(listener)
        addresses[name] = ("127.0.0.1", port)
    return listeners, addresses


def _echo(source: str, payload: bytes) -> bytes:
    return source.encode() + b":" + payload


async def test_two_nodes_exchange_both_ways_on_one_connection(nursery: trio.Nursery) -> None:
    listeners, addresses = await _listeners(2)
    a = await start_node(nursery, "node1", addresses, listeners[0])
    b = await start_node(nursery, "node2", addresses, listeners[1])
    for node in (a, b):
        node.links.handle("echo", _echo)
    await wait_up(a, b)
    assert await a.links.request("node2", "echo", b"hi") == b"node1:hi"
    assert await b.links.request("node1", "echo", b"yo") == b"node2:yo"
    assert a.links.link("node2").stats.connects == b.links.link("node1").stats.connects == 1
    with pytest.raises(PeerRefused, match="no handler"):
        await a.links.request("node2", "nothing", b"")
    with pytest.raises(PeerUnavailable):
        await a.links.request("node9", "echo", b"")


async def test_three_nodes_every_pair(nursery: trio.Nursery) -> None:
    listeners, addresses = await _listeners(3)
    nodes = [await start_node(nursery, n, addresses, s) for n, s in zip(NAMES, listeners, strict=True)]
    for node in nodes:
        node.links.handle("echo", _echo)
    await wait_up(*nodes)
    for node in nodes:
        for other in NAMES:
            if other != node.links.name:
                reply = await node.links.request(other, "echo", b"x")
                assert reply == node.links.name.encode() + b":x"


async def test_a_refusing_handler_leaves_the_link_up(nursery: trio.Nursery) -> None:
    listeners, addresses = await _listeners(2)
    a = await start_node(nursery, "node1", addresses, listeners[0])
    b = await start_node(nursery, "node2", addresses, listeners[1])

    def refuse(source: str, payload: bytes) -> bytes:
        raise ValueError("stale epoch")

    b.links.handle("entries", refuse)
    b.links.handle("echo", _echo)
    await wait_up(a, b)
    with pytest.raises(PeerRefused, match="stale epoch"):
        await a.links.request("node2", "entries", b"")
    assert await a.links.request("node2", "echo", b"1") == b"node1:1"


async def test_order_is_kept_on_a_link(nursery: trio.Nursery) -> None:
    listeners, addresses = await _listeners(2)
    a = await start_node(nursery, "node1", addresses, listeners[0])
    b = await start_node(nursery, "node2", addresses, listeners[1])
    seen: list[int] = []

    async def record(source: str, payload: bytes) -> bytes:
        seen.append(int(payload))
        if len(seen) % 97 == 0:
            await trio.sleep(0.001)  # a handler that sometimes waits (an fsync) keeps the order too
        return payload

    b.links.handle("n", record)
    await wait_up(a, b)
    pending = [await a.links.submit("node2", "n", str(i).encode()) for i in range(3000)]
    replies = [int(await p.wait()) for p in pending]
    assert seen == replies == list(range(3000))


async def test_killed_peer_fails_in_flight_requests_then_the_link_comes_back(nursery: trio.Nursery) -> None:
    listeners, addresses = await _listeners(2)
    a = await start_node(nursery, "node1", addresses, listeners[0])
    b = await start_node(nursery, "node2", addresses, listeners[1])
    gate = trio.Event()

    async def stuck(source: str, payload: bytes) -> bytes:
        await gate.wait()
        return b""

    b.links.handle("n", stuck)
    await wait_up(a, b)
    in_flight = [await a.links.submit("node2", "n", b"%d" % i) for i in range(10)]
    b.kill()
    for pending in in_flight:
        with trio.fail_after(5):
            with pytest.raises(PeerLinkDown):
                await pending.wait()
    # node2 comes back on the same port; node1 dials again.
    listener = (await trio.open_tcp_listeners(addresses["node2"][1], host="127.0.0.1"))[0]
    b2 = await start_node(nursery, "node2", addresses, listener)
    b2.links.handle("echo", _echo)
    with trio.fail_after(5):
        assert await a.links.request("node2", "echo", b"again") == b"node1:again"
    assert a.links.link("node2").stats.connects == 2


async def test_a_silent_network_is_noticed_and_the_link_restored(nursery: trio.Nursery) -> None:
    listeners, addresses = await _listeners(2)
    b = await start_node(nursery, "node2", addresses, listeners[1])
    proxy = PausableProxy(addresses["node2"])
    await nursery.start(proxy.run)
    via_proxy = {**addresses, "node2": ("127.0.0.1", proxy.port)}
    a = await start_node(nursery, "node1", via_proxy, listeners[0], peer_timeout=0.6)
    received: list[int] = []

    def record(source: str, payload: bytes) -> bytes:
        received.append(int(payload))
        return b""

    b.links.handle("n", record)
    await wait_up(a, b)
    await a.links.request("node2", "n", b"0")
    proxy.pause()
    lost = await a.links.submit("node2", "n", b"1")
    started = trio.current_time()
    with trio.fail_after(5):
        with pytest.raises(PeerLinkDown):
            await lost.wait()
    noticed = trio.current_time() - started
    assert 0.4 < noticed < 3.0  # about peer_timeout: heartbeats stopped coming
    proxy.cut()
    proxy.resume()
    with trio.fail_after(5):
        await a.links.request("node2", "n", b"2")
    assert received in ([0, 2], [0, 1, 2])  # "1" may have been handled: PeerLinkDown says "maybe"
    assert a.links.link("node2").stats.connects >= 2


async def test_a_slow_reader_holds_its_senders_back(nursery: trio.Nursery) -> None:
    listeners, addresses = await _listeners(2)
    window = 64 * 1024
    a = await start_node(nursery, "node1", addresses, listeners[0], window_bytes=window)
    b = await start_node(nursery, "node2", addresses, listeners[1])
    gate = trio.Event()
    handled: list[int] = []

    async def slow(source: str, payload: bytes) -> bytes:
        await gate.wait()
        handled.append(int(payload[:8]))
        return b""

    b.links.handle("n", slow)
    await wait_up(a, b)
    submitted: list[object] = []
    body = b"x" * 1016

    async def produce() -> None:
        for i in range(2000):
            submitted.append(await a.links.submit("node2", "n", b"%08d" % i + body))

    nursery.start_soon(produce)
    await trio.sleep(0.5)
    link = a.links.link("node2")
    # The producer is held at the window: about 64 KiB of requests outstanding, not 2 MB.
    assert 0 < len(submitted) <= window // 1024 + 1
    assert link.unanswered_bytes <= window
    assert len(link.connection.outbox) <= window // 1024 + 1  # type: ignore[union-attr]
    gate.set()
    with trio.fail_after(20):
        while len(submitted) < 2000 or not all(p.done for p in submitted):  # type: ignore[attr-defined]
            await trio.sleep(0.01)
    assert handled == list(range(2000))
    assert link.unanswered_bytes == 0


async def test_a_stranger_is_refused(nursery: trio.Nursery) -> None:
    from leveret.broker.cluster.peer_protocol import encode_hello

    listeners, addresses = await _listeners(2)
    b = await start_node(nursery, "node2", addresses, listeners[1])
    for hello in (encode_hello("other-cluster", "node1"), encode_hello("test-cluster", "node7")):
        stream = await trio.open_tcp_stream(*addresses["node2"])
        await stream.send_all(hello)
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""  # closed without a hello back
        await stream.aclose()
    assert not b.links.link("node1").up


async def test_a_node_of_another_version_is_refused_and_both_ends_say_why(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    from leveret.broker.cluster.peer_protocol import VERSION, FrameDecoder, Hello, encode_hello

    listeners, addresses = await _listeners(2)
    b = await start_node(nursery, "node2", addresses, listeners[1])
    for _ in range(3):  # a dialer of an older build, trying again
        stream = await trio.open_tcp_stream(*addresses["node2"])
        await stream.send_all(encode_hello("test-cluster", "node1", version=1))
        with trio.fail_after(5):
            answer = FrameDecoder().feed(await stream.receive_some(4096))
        assert answer == [Hello("test-cluster", "node2", VERSION)]  # its own version, then closed
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""
        await stream.aclose()
    assert not b.links.link("node1").up
    refused = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert refused == [  # once, not at every try
        f"peer link with node1 refused: node 'node1' speaks peer protocol version 1, this node version "
        f"{VERSION}: nodes of different builds cannot link (run the same build on every node)"
    ]

    # This node dialing one of another build: refused on that node's hello, said once.
    caplog.clear()
    older = await trio.open_tcp_listeners(0, host="127.0.0.1")
    accepted = 0

    async def older_node(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await stream.receive_some(4096)
        await stream.send_all(encode_hello("test-cluster", "node2", version=1))
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, older_node, older)
    port = older[0].socket.getsockname()[1]
    a = await start_node(nursery, "node1", {**addresses, "node2": ("127.0.0.1", port)}, listeners[0])
    with trio.fail_after(10):
        while accepted < 3:
            await trio.sleep(0.05)
    assert not a.links.link("node2").up
    refused = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert refused == [f"peer link with node2 refused: node 'node2' speaks peer protocol version 1, this "
                       f"node version {VERSION}: nodes of different builds cannot link (run the same "
                       "build on every node)"]


async def test_the_dialer_serves_a_request_sent_right_behind_the_hello(nursery: trio.Nursery) -> None:
    """The accepting end may send its first requests in the segment that carries its hello (after a
    heal, every queue's claims and catch-up are waiting for the link): the dialer answers them rather
    than refusing the link, however large they are."""
    from leveret.broker.cluster.peer_protocol import FrameDecoder, Reply, encode_hello

    listeners, addresses = await _listeners(1)
    payload = b"x" * 100_000  # far over the 4 KiB a hello may take
    replies: list[Reply] = []
    answered = trio.Event()

    async def eager_node2(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)  # node1's hello
        await stream.send_all(encode_hello("test-cluster", "node2") + encode_request(1, "echo", payload))
        decoder = FrameDecoder()
        while not replies:
            replies.extend(f for f in decoder.feed(await stream.receive_some(65536)) if isinstance(f, Reply))
        answered.set()
        await trio.sleep_forever()

    eager = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, eager_node2, eager)
    addresses["node2"] = ("127.0.0.1", eager[0].socket.getsockname()[1])
    a = await start_node(nursery, "node1", addresses, listeners[0])
    a.links.handle("echo", _echo)
    with trio.fail_after(5):
        await answered.wait()
    assert replies == [Reply(1, True, b"node2:" + payload)]
    assert a.links.link("node2").stats.connects == 1


async def test_heartbeats_keep_an_idle_link_up(nursery: trio.Nursery) -> None:
    listeners, addresses = await _listeners(2)
    a = await start_node(nursery, "node1", addresses, listeners[0], peer_timeout=0.3)
    b = await start_node(nursery, "node2", addresses, listeners[1], peer_timeout=0.3)
    b.links.handle("echo", _echo)
    await wait_up(a, b)
    await trio.sleep(1.5)  # five timeouts' worth of silence from the application
    assert a.links.link("node2").stats.connects == b.links.link("node1").stats.connects == 1
    assert await a.links.request("node2", "echo", b"still") == b"node1:still"


async def test_a_request_to_a_node_that_is_down_fails_after_connect_timeout(nursery: trio.Nursery) -> None:
    listeners, addresses = await _listeners(2)
    listeners[1].socket.close()  # node2 never runs
    a = await start_node(nursery, "node1", addresses, listeners[0], connect_timeout=0.5)
    started = trio.current_time()
    with pytest.raises(PeerUnavailable, match="no link to node2"):
        await a.links.request("node2", "echo", b"")
    assert 0.4 < trio.current_time() - started < 3.0


async def test_every_sender_held_at_the_window_goes_on_once_there_is_room(nursery: trio.Nursery) -> None:
    """Several tasks waiting for the window at once (a leader's shipping tasks, one per queue, to the same
    follower): each must be woken when replies free room, not only the one that waited last."""
    listeners, addresses = await _listeners(2)
    window = 16 * 1024
    a = await start_node(nursery, "node1", addresses, listeners[0], window_bytes=window)
    b = await start_node(nursery, "node2", addresses, listeners[1])
    gate = trio.Event()

    async def slow(source: str, payload: bytes) -> bytes:
        await gate.wait()
        return b""

    b.links.handle("n", slow)
    await wait_up(a, b)
    done: list[int] = []

    async def produce(sender: int) -> None:
        pending = [await a.links.submit("node2", "n", b"x" * 1024) for _ in range(40)]
        for reply in pending:
            await reply.wait()
        done.append(sender)

    for sender in range(3):
        nursery.start_soon(produce, sender)
    await trio.sleep(0.3)  # the window fills and every sender waits for room
    gate.set()
    with trio.fail_after(10):
        while len(done) < 3:
            await trio.sleep(0.01)
    assert a.links.link("node2").unanswered_bytes == 0


class _PausedStream:
    """A connection's stream in a process that was paused (SIGSTOP) past the peer timeout while a request
    sat in its socket buffer: the read returns it only on waking, with no checkpoint in between."""

    def __init__(self, data: bytes, paused_for: float) -> None:
        self.data, self.paused_for = data, paused_for

    async def receive_some(self, max_bytes: int) -> bytes:
        time.sleep(self.paused_for)  # the whole process stood still
        data, self.data = self.data, b""
        return data


async def test_what_a_paused_process_finds_in_its_socket_buffer_is_dropped_unread() -> None:
    links = PeerLinks("node2", "cluster", {"node1": ("127.0.0.1", 1)}, peer_timeout=0.3)
    handled: list[bytes] = []
    links.handle("n", lambda source, payload: handled.append(payload) or b"")
    link = links.link("node1")
    stale = _PausedStream(encode_request(1, "n", b"delivered before the pause"), paused_for=0.5)
    with trio.fail_after(2):
        await link._read(_Connection(stale))  # type: ignore[arg-type]
    assert handled == []  # the other end gave that connection up meanwhile: nothing of it is acted on
    fresh = _PausedStream(encode_request(2, "n", b"in time"), paused_for=0.0)
    with trio.move_on_after(0.5):
        await link._read(_Connection(fresh))  # type: ignore[arg-type]
    assert handled == [b"in time"]
