"""The broker's domain driven through whole connections (bytes in, bytes out), with no sockets."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pamqp import body as pamqp_body
from pamqp import header
from pamqp.commands import Basic, Channel, Confirm, Connection, Exchange, Queue, Tx

from leveret.broker.node import Node
from leveret.broker.session.connection import ConnectionSession
from leveret.config import Config
from tests.peers import ClientPeer, methods


@pytest.fixture
def node() -> Node:
    return Node(Config())


def connect(node: Node, channel: int = 1) -> ClientPeer:
    client = ClientPeer(ConnectionSession(node, "127.0.0.1:1", from_loopback=True))
    client.handshake()
    client.open_channel(channel)
    return client


def deliveries(frames: list[tuple[int, Any]]) -> list[tuple[Any, bytes]]:
    """(Deliver or GetOk method, body) pairs from a frame list."""
    found: list[tuple[Any, bytes]] = []
    current: Any = None
    for _, value in frames:
        if isinstance(value, (Basic.Deliver, Basic.GetOk, Basic.Return)):
            current = value
            found.append((value, b""))
        elif isinstance(value, header.ContentHeader) and current is not None and value.body_size == 0:
            current = None
        elif isinstance(value, pamqp_body.ContentBody) and current is not None:
            found[-1] = (found[-1][0], found[-1][1] + value.value)
    return found


def declare(client: ClientPeer, name: str, **kwargs: Any) -> Queue.DeclareOk:
    reply = methods(client.method(1, Queue.Declare(queue=name, **kwargs)))
    assert isinstance(reply[-1], Queue.DeclareOk), reply
    return reply[-1]


def consume(client: ClientPeer, queue: str, tag: str, *, prefetch: int = 0, channel: int = 1) -> list:
    if prefetch:
        client.method(channel, Basic.Qos(prefetch_count=prefetch))
    return client.method(channel, Basic.Consume(queue=queue, consumer_tag=tag))


def test_round_robin_across_consumers_within_prefetch(node: Node) -> None:
    publisher = connect(node)
    declare(publisher, "work")
    consumers = [connect(node) for _ in range(3)]
    for i, consumer in enumerate(consumers):
        consume(consumer, "work", f"c{i}", prefetch=1)
    for n in range(3):
        publisher.publish(1, f"m{n}".encode(), routing_key="work")
    bodies = [[body for _, body in deliveries(c.read())] for c in consumers]
    assert sorted(b for got in bodies for b in got) == [b"m0", b"m1", b"m2"]
    assert all(len(got) == 1 for got in bodies)
    # Everyone is at its prefetch limit: the next message waits for an ack.
    publisher.publish(1, b"m3", routing_key="work")
    assert all(not deliveries(c.read()) for c in consumers)
    first = consumers[1]
    tag = [m for m, _ in deliveries(first.received)][0].delivery_tag
    frames = first.method(1, Basic.Ack(delivery_tag=tag))
    assert [body for _, body in deliveries(frames)] == [b"m3"]


def test_closed_channel_requeues_unacked_in_order_marked_redelivered(node: Node) -> None:
    publisher = connect(node)
    declare(publisher, "q")
    for n in range(5):
        publisher.publish(1, f"m{n}".encode(), routing_key="q")
    consumer = connect(node)
    got = deliveries(consume(consumer, "q", "c", prefetch=3))
    assert [b for _, b in got] == [b"m0", b"m1", b"m2"]
    # Acking m1 frees credit: m3 is delivered too, and never acked.
    assert [b for _, b in deliveries(consumer.method(1, Basic.Ack(delivery_tag=got[1][0].delivery_tag)))] == [
        b"m3"
    ]
    consumer.method(1, Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
    other = connect(node)
    got = deliveries(consume(other, "q", "d"))
    assert [(b, m.redelivered) for m, b in got] == [
        (b"m0", True),
        (b"m2", True),
        (b"m3", True),
        (b"m4", False),
    ]


def test_unknown_delivery_tag_closes_channel_406(node: Node) -> None:
    client = connect(node)
    reply = methods(client.method(1, Basic.Ack(delivery_tag=7)))
    assert isinstance(reply[0], Channel.Close)
    assert (reply[0].reply_code, reply[0].reply_text) == (406, "PRECONDITION_FAILED - unknown delivery tag 7")
    assert (reply[0].class_id, reply[0].method_id) == (60, 80)


def test_confirms_are_coalesced_into_one_multiple_ack_per_read(node: Node) -> None:
    client = connect(node)
    declare(client, "q")
    client.method(1, Confirm.Select())
    from pamqp import frame

    data = b""
    for _ in range(10):
        data += frame.marshal(Basic.Publish(routing_key="q"), 1)
        data += frame.marshal(header.ContentHeader(0, 1, Basic.Properties()), 1)
        data += frame.marshal(pamqp_body.ContentBody(b"x"), 1)
    acks = [m for m in methods(client.send(data)) if isinstance(m, Basic.Ack)]
    assert [(a.delivery_tag, a.multiple) for a in acks] == [(10, True)]


def test_mandatory_unroutable_is_returned_before_its_confirm(node: Node) -> None:
    client = connect(node)
    client.method(1, Confirm.Select())
    frames = client.publish(1, b"lost", routing_key="nowhere", mandatory=True)
    kinds = [type(m) for m in methods(frames)]
    assert kinds == [Basic.Return, Basic.Ack]
    returned = methods(frames)[0]
    assert (returned.reply_code, returned.reply_text) == (312, "NO_ROUTE")


def test_publish_to_missing_exchange_is_404_on_the_channel(node: Node) -> None:
    client = connect(node)
    reply = methods(client.publish(1, b"x", exchange="missing"))
    assert isinstance(reply[0], Channel.Close) and reply[0].reply_code == 404
    assert reply[0].reply_text == "NOT_FOUND - no exchange 'missing' in vhost '/'"


def test_exclusive_queue_is_locked_to_its_connection_and_deleted_with_it(node: Node) -> None:
    owner = connect(node)
    declare(owner, "mine", exclusive=True)
    other = connect(node)
    reply = methods(other.method(1, Queue.Declare(queue="mine", passive=True)))
    assert reply[0].reply_code == 405
    owner.server.connection_lost()
    assert "mine" not in node.vhosts["/"].queues


def test_reserved_names_are_refused_403(node: Node) -> None:
    client = connect(node)
    reply = methods(client.method(1, Exchange.Declare(exchange="amq.mine", exchange_type="direct")))
    assert reply[0].reply_code == 403


def test_unknown_exchange_type_closes_the_connection_503(node: Node) -> None:
    client = connect(node)
    reply = methods(client.method(1, Exchange.Declare(exchange="e", exchange_type="nonsense")))
    assert reply[0].reply_code == 503 and reply[0].name == "Connection.Close"


def test_queue_delete_cancels_consumers_with_notification(node: Node) -> None:
    client = connect(node)
    declare(client, "gone")
    consume(client, "gone", "c1")
    other = connect(node)
    other.method(1, Queue.Delete(queue="gone"))
    cancels = [m for m in methods(client.read()) if isinstance(m, Basic.Cancel)]
    assert [c.consumer_tag for c in cancels] == ["c1"]


def test_tx_rollback_discards_publishes_and_commit_applies_them(node: Node) -> None:
    client = connect(node)
    declare(client, "txq")
    client.method(1, Tx.Select())
    client.publish(1, b"dropped", routing_key="txq")
    client.method(1, Tx.Rollback())
    client.publish(1, b"kept", routing_key="txq")
    client.method(1, Tx.Commit())
    got = deliveries(client.method(1, Basic.Get(queue="txq", no_ack=True)))
    assert [b for _, b in got] == [b"kept"]
    assert isinstance(methods(client.method(1, Basic.Get(queue="txq")))[0], Basic.GetEmpty)


def test_tx_ack_tags_are_checked_at_once_and_a_rollback_gives_them_back(node: Node) -> None:
    client = connect(node)
    declare(client, "txa")
    for body in (b"a", b"b"):
        client.publish(1, body, routing_key="txa")
    client.method(1, Tx.Select())
    tags = [m.delivery_tag for m, _ in deliveries(client.method(1, Basic.Get(queue="txa")))]
    tags += [m.delivery_tag for m, _ in deliveries(client.method(1, Basic.Get(queue="txa")))]
    client.method(1, Basic.Ack(delivery_tag=tags[1]))
    client.method(1, Tx.Rollback())
    # Unacked again, in tag order: a multiple ack of the first takes only the first.
    client.method(1, Basic.Ack(delivery_tag=tags[0], multiple=True))
    client.method(1, Tx.Commit())
    assert node.vhosts["/"].queues["txa"].unacked == 1
    reply = methods(client.method(1, Basic.Ack(delivery_tag=tags[0])))
    assert isinstance(reply[-1], Channel.Close) and reply[-1].reply_code == 406, reply
    assert node.vhosts["/"].queues["txa"].unacked == 0  # the channel's close requeued the second


def test_tx_with_an_unknown_ack_tag_never_routes_its_publishes(node: Node) -> None:
    client = connect(node)
    declare(client, "txp")
    client.method(1, Tx.Select())
    client.publish(1, b"never", routing_key="txp")
    reply = methods(client.method(1, Basic.Ack(delivery_tag=7)))
    assert isinstance(reply[-1], Channel.Close), reply
    closed = reply[-1]
    assert (closed.reply_code, closed.reply_text) == (406, "PRECONDITION_FAILED - unknown delivery tag 7")
    assert node.vhosts["/"].queues["txp"].message_count == 0


def test_nack_requeue_redelivers_and_reject_drops(node: Node) -> None:
    client = connect(node)
    declare(client, "n")
    client.publish(1, b"a", routing_key="n")
    ((method, _),) = deliveries(client.method(1, Basic.Get(queue="n")))
    client.method(1, Basic.Nack(delivery_tag=method.delivery_tag, requeue=True))
    ((method, body),) = deliveries(client.method(1, Basic.Get(queue="n")))
    assert body == b"a" and method.redelivered
    client.method(1, Basic.Reject(delivery_tag=method.delivery_tag, requeue=False))
    assert isinstance(methods(client.method(1, Basic.Get(queue="n")))[0], Basic.GetEmpty)


def test_global_prefetch_limits_the_channel(node: Node) -> None:
    publisher = connect(node)
    declare(publisher, "g1")
    declare(publisher, "g2")
    for _ in range(4):
        publisher.publish(1, b"x", routing_key="g1")
        publisher.publish(1, b"y", routing_key="g2")
    consumer = connect(node)
    consumer.method(1, Basic.Qos(prefetch_count=3, global_=True))
    consumer.method(1, Basic.Consume(queue="g1", consumer_tag="a"))
    consumer.method(1, Basic.Consume(queue="g2", consumer_tag="b"))
    assert len(deliveries(consumer.received)) == 3


@pytest.mark.parametrize("kind", ["quorum", "stream"])
def test_a_quorum_or_stream_queue_refuses_a_consumer_under_global_prefetch(node: Node, kind: str) -> None:
    """RabbitMQ 3.10: a connection error, whether the qos came before the channel's other consumers."""
    client = connect(node)
    declare(client, "typed", durable=True, arguments={"x-queue-type": kind})
    declare(client, "plain")
    client.method(1, Basic.Consume(queue="plain", consumer_tag="before"))
    client.method(1, Basic.Qos(prefetch_count=3, global_=True))
    replies = methods(client.method(1, Basic.Consume(queue="typed")))
    (close,) = [m for m in replies if isinstance(m, Connection.Close)]
    assert (close.reply_code, close.reply_text) == (
        540, "NOT_IMPLEMENTED - queue 'typed' in vhost '/' does not support global qos"
    )
    assert (close.class_id, close.method_id) == (60, 20)


def test_global_prefetch_with_two_consumers_on_one_queue_and_a_get(node: Node) -> None:
    """The channel-wide limit holds however the queue splits its deliveries, and counts basic.get."""
    publisher = connect(node)
    declare(publisher, "g")
    publisher.publish(1, b"x", routing_key="g")
    consumer = connect(node)
    consumer.method(1, Basic.Qos(prefetch_count=3, global_=True))
    ((got, _),) = deliveries(consumer.method(1, Basic.Get(queue="g")))
    consumer.method(1, Basic.Consume(queue="g", consumer_tag="a"))
    consumer.method(1, Basic.Consume(queue="g", consumer_tag="b"))
    for _ in range(5):  # each consumer could take two by itself: together they may take two
        publisher.publish(1, b"x", routing_key="g")
    assert len(deliveries(consumer.read())) == 2  # with the get, three
    assert len(deliveries(consumer.method(1, Basic.Ack(delivery_tag=got.delivery_tag)))) == 1


def test_the_queue_holds_its_unacked_messages_and_credit_comes_from_the_channel(node: Node) -> None:
    client = connect(node)
    declare(client, "held")
    for body in (b"1", b"2", b"3"):
        client.publish(1, body, routing_key="held")
    consume(client, "held", "c", prefetch=2)
    queue = node.vhosts["/"].queues["held"]
    (consumer,) = queue.consumers
    assert sorted(queue.checked_out) == [1, 2] and consumer.credit == 0
    first = deliveries(client.received)[0][0]
    got = deliveries(client.method(1, Basic.Ack(delivery_tag=first.delivery_tag)))
    assert [b for _, b in got] == [b"3"]
    assert sorted(queue.checked_out) == [2, 3] and consumer.credit == 0 and queue.message_count == 0
    client.method(1, Basic.Nack(delivery_tag=0, multiple=True, requeue=True))
    # Both back, redelivered to the same consumer in order, with its credit back from the channel.
    assert [(m.redelivered, b) for m, b in deliveries(client.received)[-2:]] == [(True, b"2"), (True, b"3")]
    assert sorted(queue.checked_out) == [2, 3]


def test_direct_reply_to_round_trip(node: Node) -> None:
    requester = connect(node)
    requester.method(1, Basic.Consume(queue="amq.rabbitmq.reply-to", consumer_tag="r", no_ack=True))
    server = connect(node)
    declare(server, "rpc")
    requester.publish(
        1, b"ping", routing_key="rpc", properties=Basic.Properties(reply_to="amq.rabbitmq.reply-to")
    )
    ((request, _),) = deliveries(server.method(1, Basic.Get(queue="rpc", no_ack=True)))
    reply_to = [v for _, v in server.received if isinstance(v, header.ContentHeader)][-1].properties.reply_to
    assert reply_to.startswith("amq.rabbitmq.reply-to.")
    server.publish(1, b"pong", routing_key=reply_to)
    assert [b for _, b in deliveries(requester.read())] == [b"pong"]


def test_auto_delete_queue_goes_with_its_last_consumer(node: Node) -> None:
    client = connect(node)
    declare(client, "ad", auto_delete=True)
    consume(client, "ad", "c")
    client.method(1, Basic.Cancel(consumer_tag="c"))
    assert "ad" not in node.vhosts["/"].queues


def test_exchange_to_exchange_binding_routes_once_per_queue(node: Node) -> None:
    client = connect(node)
    client.method(1, Exchange.Declare(exchange="src", exchange_type="fanout"))
    client.method(1, Exchange.Declare(exchange="dst", exchange_type="fanout"))
    client.method(1, Exchange.Bind(destination="dst", source="src"))
    declare(client, "e2e")
    client.method(1, Queue.Bind(queue="e2e", exchange="src"))
    client.method(1, Queue.Bind(queue="e2e", exchange="dst"))
    client.publish(1, b"once", exchange="src")
    assert node.vhosts["/"].queues["e2e"].message_count == 1


def test_connections_past_the_node_limit_are_refused_530() -> None:
    config = Config()
    node = Node(replace(config, limits=replace(config.limits, max_connections=2)))
    first, second = connect(node), connect(node)
    third = ClientPeer(ConnectionSession(node, "third", from_loopback=True))
    with pytest.raises(AssertionError):
        third.handshake()
    close = methods(third.received)[-1]
    assert (close.reply_code, close.reply_text) == (
        530, "NOT_ALLOWED - connection refused: node connection limit (2) is reached"
    )
    # A connection that closes makes room for the next.
    first.server.connection_lost()
    connect(node)
    assert not second.server.finished


@pytest.mark.parametrize("no_ack", [False, True])
def test_consumers_stop_past_the_output_bound_and_resume_once_it_drains(node: Node, no_ack: bool) -> None:
    publisher = connect(node)
    declare(publisher, "bound")
    consumer = connect(node)
    consumer.method(1, Basic.Consume(queue="bound", consumer_tag="c", no_ack=no_ack))  # no prefetch limit
    session = consumer.server
    body = b"x" * 100_000
    for _ in range(100):  # 10 MB for a connection whose socket (here: nobody) takes nothing
        publisher.publish(1, body, routing_key="bound")
    queue = node.vhosts["/"].queues["bound"]
    # Past OUTBOX_HIGH_WATER (4 MiB) the rest stays in the queue, where the pager can page it out.
    assert 50 <= queue.message_count <= 60
    assert not session.writable
    delivered = len(deliveries(consumer.read()))  # the server takes what is queued...
    session.output_left(2 * 1024 * 1024)  # ...and the socket some of it, not enough: still stopped
    assert 50 <= queue.message_count <= 60
    session.output_left(0)  # all written: they take messages again
    assert queue.message_count < 20
    assert delivered + len(deliveries(consumer.read())) > 80
