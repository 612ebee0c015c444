"""Priority queues, consumer priorities and single active consumer."""

from __future__ import annotations

from pamqp.commands import Basic, Channel

from tests.lifecycle_support import bodies, clocked_node, closed_with, declare_queue, messages
from tests.test_session import connect


def priority(value: int) -> Basic.Properties:
    return Basic.Properties(priority=value)


def test_higher_priority_first_fifo_within_and_capped_at_the_maximum() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-max-priority": 5})
    for body, value in ((b"low1", 1), (b"none", 0), (b"top1", 9), (b"mid", 3), (b"top2", 5), (b"low2", 1)):
        client.publish(1, body, routing_key="q", properties=priority(value))
    frames = client.method(1, Basic.Consume(queue="q", consumer_tag="c", no_ack=True))
    assert bodies(frames) == [b"top1", b"top2", b"mid", b"low1", b"low2", b"none"]


def test_requeued_messages_keep_their_place_by_priority() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-max-priority": 2})
    for body, value in ((b"h1", 2), (b"h2", 2), (b"l1", 1)):
        client.publish(1, body, routing_key="q", properties=priority(value))
    client.method(1, Basic.Qos(prefetch_count=2))
    frames = client.method(1, Basic.Consume(queue="q", consumer_tag="c"))
    assert bodies(frames) == [b"h1", b"h2"]
    client.publish(1, b"h3", routing_key="q", properties=priority(2))
    client.method(1, Basic.Cancel(consumer_tag="c"))
    client.method(1, Basic.Recover(requeue=True))
    frames = client.method(1, Basic.Consume(queue="q", consumer_tag="d", no_ack=True))
    got = [(m.redelivered, b) for m, _, b in messages(frames)]
    assert got == [(True, b"h1"), (True, b"h2"), (False, b"h3"), (False, b"l1")]


def test_higher_priority_consumers_get_messages_while_they_have_credit() -> None:
    node, _ = clocked_node()
    publisher = connect(node)
    declare_queue(publisher, "q")
    low, high_a, high_b = connect(node), connect(node), connect(node)
    low.method(1, Basic.Consume(queue="q", consumer_tag="low", arguments={"x-priority": -1}))
    for client, tag in ((high_a, "a"), (high_b, "b")):
        client.method(1, Basic.Qos(prefetch_count=2))
        client.method(1, Basic.Consume(queue="q", consumer_tag=tag, arguments={"x-priority": 10}))
    assert node.vhosts["/"].queues["q"].lifecycle is not None
    for n in range(6):
        publisher.publish(1, b"%d" % n, routing_key="q")
    # Round-robin among the equals until both are full, then the lower one.
    assert bodies(high_a.read()) == [b"0", b"2"]
    assert bodies(high_b.read()) == [b"1", b"3"]
    assert bodies(low.read()) == [b"4", b"5"]


def test_single_active_consumer_only_the_first_gets_messages() -> None:
    node, _ = clocked_node()
    publisher = connect(node)
    declare_queue(publisher, "q", **{"x-single-active-consumer": True})
    first, second = connect(node), connect(node)
    first.method(1, Basic.Qos(prefetch_count=1))
    first.method(1, Basic.Consume(queue="q", consumer_tag="first"))
    second.method(1, Basic.Consume(queue="q", consumer_tag="second"))
    for n in range(3):
        publisher.publish(1, b"%d" % n, routing_key="q")
    assert bodies(first.read()) == [b"0"]
    assert bodies(second.read()) == []
    # The active consumer goes: its unacked message and the rest go to the next one, in order.
    first.method(1, Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
    got = [(m.redelivered, b) for m, _, b in messages(second.read())]
    assert got == [(True, b"0"), (False, b"1"), (False, b"2")]


def test_single_active_consumer_passes_to_the_highest_priority_then_the_earliest() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-single-active-consumer": True})
    for tag, value in (("first", 0), ("early", 5), ("late", 5), ("low", 1)):
        client.method(1, Basic.Consume(queue="q", consumer_tag=tag, arguments={"x-priority": value}))
    client.method(1, Basic.Cancel(consumer_tag="first"))
    deliveries = messages(client.publish(1, b"x", routing_key="q"))
    assert [m.consumer_tag for m, _, _ in deliveries] == ["early"]


def test_single_active_consumer_refuses_exclusive_consumers() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-single-active-consumer": True})
    frames = client.method(1, Basic.Consume(queue="q", consumer_tag="c", exclusive=True))
    assert closed_with(frames) == (403, "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use")


def test_consumer_priority_must_be_an_integer() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q")
    frames = client.method(1, Basic.Consume(queue="q", consumer_tag="c", arguments={"x-priority": "high"}))
    assert closed_with(frames) == (
        406,
        "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'q' in vhost '/': "
        '"expected integer, got longstr"',
    )
