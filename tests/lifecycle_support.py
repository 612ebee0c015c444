"""Shared by the lifecycle tests: a node on a hand-driven clock, and what a client received."""

from __future__ import annotations

from typing import Any

from pamqp import body as pamqp_body
from pamqp import header
from pamqp.commands import Basic, Channel, Exchange, Queue

from leveret.amqp import tables
from leveret.amqp.properties import HEADERS, split_properties
from leveret.broker.node import Node
from leveret.broker.queues.queue import Queue as BrokerQueue
from leveret.config import Config
from tests.peers import ClientPeer, methods


class FakeClock:
    """The node's monotonic clock, moved by the test; moving it fires the queue timers that fell due."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.node: Node | None = None

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        assert self.node is not None
        self.node.deadlines.fire(self.now)


def clocked_node(config: Config | None = None) -> tuple[Node, FakeClock]:
    clock = FakeClock()
    node = Node(config or Config(), clock=clock)
    clock.node = node
    return node, clock


def messages(frames: list[tuple[int, Any]]) -> list[tuple[Any, Basic.Properties, bytes]]:
    """(Deliver/GetOk/Return method, properties, body) for each message in a frame list."""
    found: list[tuple[Any, Basic.Properties, bytes]] = []
    for _, value in frames:
        if isinstance(value, (Basic.Deliver, Basic.GetOk, Basic.Return)):
            found.append((value, Basic.Properties(), b""))
        elif isinstance(value, header.ContentHeader) and found:
            found[-1] = (found[-1][0], value.properties, b"")
        elif isinstance(value, pamqp_body.ContentBody) and found:
            method, properties, body = found[-1]
            found[-1] = (method, properties, body + value.value)
    return found


def bodies(frames: list[tuple[int, Any]]) -> list[bytes]:
    return [body for _, _, body in messages(frames)]


def get(client: ClientPeer, queue: str, *, no_ack: bool = True) -> tuple[Any, Basic.Properties, bytes] | None:
    """basic.get: the message, or None on get-empty."""
    found = messages(client.method(1, Basic.Get(queue=queue, no_ack=no_ack)))
    return found[0] if found else None


def declare_queue(client: ClientPeer, name: str, **arguments: Any) -> None:
    """Durable when it is a quorum or stream queue, which must be (RabbitMQ's rule)."""
    durable = arguments.get("x-queue-type") in ("quorum", "stream")
    reply = methods(client.method(1, Queue.Declare(queue=name, durable=durable, arguments=arguments)))
    assert isinstance(reply[-1], Queue.DeclareOk), reply


def fanout_to(client: ClientPeer, exchange: str, queue: str, **arguments: Any) -> None:
    """A fanout exchange feeding a fresh queue: a dead-letter target."""
    client.method(1, Exchange.Declare(exchange=exchange, exchange_type="fanout"))
    declare_queue(client, queue, **arguments)
    client.method(1, Queue.Bind(queue=queue, exchange=exchange))


def closed_with(frames: list[tuple[int, Any]]) -> tuple[int, str]:
    closes = [m for m in methods(frames) if isinstance(m, Channel.Close)]
    assert closes, methods(frames)
    return closes[0].reply_code, closes[0].reply_text


def raw_headers(queue: BrokerQueue, index: int = 0) -> dict[str, bytes]:
    """A ready message's headers as raw typed values, to check the wire types the broker wrote."""
    entry = list(queue.ready)[index]
    fields = split_properties(entry.message.properties_raw)
    return dict(tables.split_table(fields[HEADERS])) if HEADERS in fields else {}
