"""Queue length limits: x-max-length, x-max-length-bytes and the three x-overflow modes."""

from __future__ import annotations

from pamqp.commands import Basic, Confirm

from leveret.broker.node import Node
from tests.lifecycle_support import bodies, clocked_node, declare_queue, fanout_to, get
from tests.peers import methods
from tests.test_session import connect


def ready_bodies(node: Node, name: str) -> list[bytes]:
    return [entry.message.body for entry in node.vhosts["/"].queues[name].ready]


def test_drop_head_dead_letters_the_oldest_with_reason_maxlen() -> None:
    node, _ = clocked_node()
    client = connect(node)
    fanout_to(client, "dlx", "dead")
    declare_queue(client, "q", **{"x-max-length": 2, "x-dead-letter-exchange": "dlx"})
    for n in range(4):
        client.publish(1, b"m%d" % n, routing_key="q")
    assert ready_bodies(node, "q") == [b"m2", b"m3"]
    assert ready_bodies(node, "dead") == [b"m0", b"m1"]
    _, properties, _ = get(client, "dead")
    assert properties.headers["x-death"][0]["reason"] == "maxlen"


def test_max_length_bytes_counts_ready_bodies() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        client.publish(1, body, routing_key="q")
    assert ready_bodies(node, "q") == [b"bbbb", b"cccc"]


def test_unacked_messages_do_not_count_towards_the_limit() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-max-length": 1})
    client.publish(1, b"held", routing_key="q")
    held, _, _ = get(client, "q", no_ack=False)
    client.publish(1, b"ready", routing_key="q")
    assert ready_bodies(node, "q") == [b"ready"]
    # A requeue over the limit drops the head, which is now the requeued message.
    client.method(1, Basic.Nack(delivery_tag=held.delivery_tag, requeue=True))
    assert ready_bodies(node, "q") == [b"ready"]


def test_reject_publish_nacks_the_refused_publish_with_confirms() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    client.method(1, Confirm.Select())
    replies = [m for n in range(3) for m in methods(client.publish(1, b"%d" % n, routing_key="q"))]
    confirms = [(type(m).__name__, m.delivery_tag) for m in replies]
    assert confirms == [("Ack", 1), ("Nack", 2), ("Nack", 3)]
    assert ready_bodies(node, "q") == [b"0"]


def test_reject_publish_without_confirms_drops_silently() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    client.publish(1, b"kept", routing_key="q")
    assert methods(client.publish(1, b"refused", routing_key="q")) == []
    assert ready_bodies(node, "q") == [b"kept"]


def test_reject_publish_refuses_even_when_a_consumer_could_take_it() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-max-length": 0, "x-overflow": "reject-publish"})
    client.method(1, Basic.Consume(queue="q", consumer_tag="c", no_ack=True))
    assert bodies(client.publish(1, b"x", routing_key="q")) == []


def test_reject_publish_dlx_refuses_and_dead_letters_the_refused_one() -> None:
    node, _ = clocked_node()
    client = connect(node)
    fanout_to(client, "dlx", "dead")
    declare_queue(client, "q", **{"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                                  "x-dead-letter-exchange": "dlx"})
    client.method(1, Confirm.Select())
    client.publish(1, b"kept", routing_key="q")
    assert isinstance(methods(client.publish(1, b"refused", routing_key="q"))[-1], Basic.Nack)
    assert ready_bodies(node, "q") == [b"kept"]
    _, properties, body = get(client, "dead")
    assert body == b"refused" and properties.headers["x-death"][0]["reason"] == "maxlen"


def test_drop_head_publishes_are_confirmed() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-max-length": 1})
    client.method(1, Confirm.Select())
    acks = [m for n in range(3) for m in methods(client.publish(1, b"%d" % n, routing_key="q"))]
    assert all(isinstance(m, Basic.Ack) for m in acks) and len(acks) == 3
