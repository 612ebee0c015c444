"""Message TTL across a restart: the log keeps each persistent message's deadline as wall-clock time, so a
message whose TTL ran out while the broker was down expires (and is dead-lettered) as soon as the node's
timers run, and one with time left keeps only that, as in RabbitMQ.

Each node runs on two fake clocks: the monotonic one its queues read (FakeClock, which fires their timers)
and the wall clock its store measures deadlines by. A restart starts a new monotonic clock, far from the
old one, while the wall clock moves on by the time the broker was down.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from pamqp.commands import Basic, Exchange, Queue

from leveret.broker.node import Node
from leveret.broker.persistence import Persistence
from leveret.broker.queues.queue import Queue as BrokerQueue
from leveret.broker.session.connection import ConnectionSession
from leveret.config import Config
from tests.lifecycle_support import FakeClock, get
from tests.peers import ClientPeer, methods

FIXTURES = Path(__file__).parent / "data"
TTL_MS = 10_000
DEAD_LETTERED = {"x-dead-letter-exchange": "dlx"}


class WallClock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_node(data_dir: Path, wall: WallClock, monotonic_start: float = 1000.0) -> tuple[Node, FakeClock]:
    """The broker's node on `data_dir` with its durable state recovered (as server.main.open_node does)."""
    clock = FakeClock()
    clock.now = monotonic_start
    node = Node(replace(Config(), data_dir=str(data_dir)), clock=clock)
    clock.node = node
    persistence = Persistence(data_dir)
    persistence.wall_clock = wall
    node.attach_persistence(persistence)
    persistence.recover(node)
    return node, clock


def stop(node: Node) -> None:
    """A clean stop: everything committed, the clean-shutdown marker left."""
    assert node.persistence is not None
    node.persistence.close()


def connect(node: Node) -> ClientPeer:
    client = ClientPeer(ConnectionSession(node, "127.0.0.1:1", from_loopback=True))
    client.handshake()
    client.open_channel()
    return client


def declare(client: ClientPeer, name: str, **arguments: Any) -> None:
    reply = methods(client.method(1, Queue.Declare(queue=name, durable=True, arguments=arguments)))
    assert isinstance(reply[-1], Queue.DeclareOk), reply


def declare_dead_letter_target(client: ClientPeer) -> None:
    client.method(1, Exchange.Declare(exchange="dlx", exchange_type="fanout", durable=True))
    declare(client, "dead")
    client.method(1, Queue.Bind(queue="dead", exchange="dlx"))


def publish(client: ClientPeer, queue: str, bodies: list[bytes], **properties: Any) -> None:
    for body in bodies:
        client.publish(1, body, routing_key=queue, properties=Basic.Properties(delivery_mode=2, **properties))


def ready(node: Node, name: str) -> list[bytes]:
    queue: BrokerQueue = node.vhosts["/"].queues[name]
    return [entry.message.body for entry in queue.ready]


def drain(client: ClientPeer, queue: str) -> list[tuple[bytes, list[dict[str, Any]]]]:
    """(body, x-death) of every message, by basic.get."""
    got = []
    while (found := get(client, queue)) is not None:
        got.append((found[2], (found[1].headers or {}).get("x-death", [])))
    return got


def test_messages_whose_ttl_ran_out_while_down_expire_at_once_and_are_dead_lettered(tmp_path: Path) -> None:
    wall = WallClock()
    node, _ = open_node(tmp_path, wall)
    client = connect(node)
    declare_dead_letter_target(client)
    declare(client, "q", **{"x-message-ttl": TTL_MS}, **DEAD_LETTERED)
    publish(client, "q", [b"one", b"two"])
    stop(node)

    wall.now += 60  # down for a minute, far past the TTL
    node, clock = open_node(tmp_path, wall, monotonic_start=5.0)
    assert ready(node, "q") == [b"one", b"two"]  # nothing is dead-lettered while the node recovers
    due = node.deadlines.next_deadline()
    assert due is not None and due <= clock.now + 0.01  # the timers take them as soon as they run
    clock.advance(0.01)
    assert ready(node, "q") == []
    got = drain(connect(node), "dead")
    assert [body for body, _ in got] == [b"one", b"two"]
    assert [(death[0]["reason"], death[0]["queue"]) for _, death in got] == [("expired", "q")] * 2


def test_a_recovered_message_keeps_only_the_rest_of_its_ttl(tmp_path: Path) -> None:
    wall = WallClock()
    node, clock = open_node(tmp_path, wall)
    client = connect(node)
    declare(client, "q", **{"x-message-ttl": TTL_MS})
    publish(client, "q", [b"early"])
    clock.advance(4)
    wall.now += 4
    publish(client, "q", [b"later"])
    stop(node)

    wall.now += 3  # 7 s gone of the first one's 10, 3 of the second's
    node, clock = open_node(tmp_path, wall, monotonic_start=50.0)
    clock.advance(2.9)
    assert ready(node, "q") == [b"early", b"later"]
    clock.advance(0.2)
    assert ready(node, "q") == [b"later"]
    clock.advance(3.8)
    assert ready(node, "q") == [b"later"]
    clock.advance(0.2)
    assert ready(node, "q") == []


def test_a_per_message_expiration_on_a_plain_durable_queue_is_kept_too(tmp_path: Path) -> None:
    wall = WallClock()
    node, _ = open_node(tmp_path, wall)
    client = connect(node)
    declare(client, "plain")
    publish(client, "plain", [b"short"], expiration="2000")
    publish(client, "plain", [b"forever"])
    stop(node)

    wall.now += 1.5
    node, clock = open_node(tmp_path, wall)
    clock.advance(0.4)
    assert ready(node, "plain") == [b"short", b"forever"]
    clock.advance(0.2)
    assert ready(node, "plain") == [b"forever"]


def test_the_lower_ttl_is_the_one_logged(tmp_path: Path) -> None:
    wall = WallClock()
    node, _ = open_node(tmp_path, wall)
    client = connect(node)
    declare(client, "q", **{"x-message-ttl": TTL_MS})
    publish(client, "q", [b"own"], expiration="1000")
    publish(client, "q", [b"queue's"], expiration="60000")
    stop(node)

    wall.now += 0.5
    node, clock = open_node(tmp_path, wall)
    clock.advance(0.6)
    assert ready(node, "q") == [b"queue's"]
    clock.advance(8.8)
    assert ready(node, "q") == [b"queue's"]
    clock.advance(0.2)
    assert ready(node, "q") == []


def test_a_wall_clock_set_back_never_lengthens_a_ttl(tmp_path: Path) -> None:
    wall = WallClock()
    node, _ = open_node(tmp_path, wall)
    declare(connect(node), "q", **{"x-message-ttl": TTL_MS})
    publish(connect(node), "q", [b"m"])
    stop(node)

    wall.now -= 3600  # the clock went back an hour: the deadline is far off, but no more than a TTL away
    node, clock = open_node(tmp_path, wall)
    clock.advance(TTL_MS / 1000 + 0.01)
    assert ready(node, "q") == []


def test_deadlines_survive_a_crash_and_the_settled_stay_settled(tmp_path: Path) -> None:
    wall = WallClock()
    node, clock = open_node(tmp_path, wall)
    client = connect(node)
    declare(client, "q", **{"x-message-ttl": TTL_MS})
    publish(client, "q", [b"acked", b"kept"])
    assert get(client, "q") is not None  # no-ack: settled
    assert node.persistence is not None
    commit = node.persistence.begin()  # committed, but no clean stop: a crash after it
    assert commit is not None
    commit.run()
    node.persistence.complete(commit)

    wall.now += 9
    node, clock = open_node(tmp_path, wall)
    got = get(connect(node), "q", no_ack=False)
    assert got is not None and got[2] == b"kept" and got[0].redelivered  # after a crash, as RabbitMQ
    node, clock = open_node(tmp_path, wall)  # the unacked one comes back, with its deadline
    clock.advance(1.01)
    assert ready(node, "q") == []


def test_a_log_written_before_deadlines_recovers_with_ttls_counted_from_the_recovery(tmp_path: Path) -> None:
    """tests/data/log-without-deadlines was written by Leveret before it logged deadlines (158acad): a
    queue `ttl` (x-message-ttl 10 s, dead-lettering to `dlx` -> `dead`) holding a, b, c; a plain queue
    holding p1 (expiration 5 s) and p2; all persistent."""
    shutil.copytree(FIXTURES / "log-without-deadlines", tmp_path / "data")
    wall = WallClock(2_000_000_000.0)  # long after those messages were published
    node, clock = open_node(tmp_path / "data", wall)
    assert ready(node, "ttl") == [b"a", b"b", b"c"] and ready(node, "plain") == [b"p1", b"p2"]
    clock.advance(4.9)
    assert ready(node, "plain") == [b"p1", b"p2"]
    clock.advance(0.2)
    assert ready(node, "plain") == [b"p2"]
    clock.advance(4.8)
    assert ready(node, "ttl") == [b"a", b"b", b"c"]
    clock.advance(0.2)
    assert ready(node, "ttl") == []
    got = drain(connect(node), "dead")
    assert [(body, death[0]["reason"]) for body, death in got] == [(b, "expired") for b in (b"a", b"b", b"c")]
