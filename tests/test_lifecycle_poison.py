"""Poison messages: quorum queues' delivery count and x-delivery-limit, and the acknowledgement timeout."""

from __future__ import annotations

from pamqp.commands import Basic, Channel

from leveret.broker.node import Node
from leveret.broker.session.ack_timeout import DeliveryMarks
from leveret.config import Config
from leveret.config.schema import Limits
from tests.lifecycle_support import (
    FakeClock,
    clocked_node,
    closed_with,
    declare_queue,
    fanout_to,
    get,
    messages,
)
from tests.test_session import connect

QUORUM = {"x-queue-type": "quorum"}


def test_quorum_redeliveries_carry_x_delivery_count_from_the_second() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **QUORUM)
    client.publish(1, b"x", routing_key="q", properties=Basic.Properties(headers={"app": 1}))
    counts = []
    for _ in range(3):
        frames = client.method(1, Basic.Consume(queue="q", consumer_tag="c"))
        ((method, properties, _),) = messages(frames)
        counts.append((method.redelivered, (properties.headers or {}).get("x-delivery-count")))
        client.method(1, Basic.Cancel(consumer_tag="c"))
        client.method(1, Basic.Nack(delivery_tag=method.delivery_tag, requeue=True))
    assert counts == [(False, None), (True, 1), (True, 2)]
    assert properties.headers["app"] == 1


def test_quorum_basic_get_shows_the_count_from_the_first() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **QUORUM)
    client.publish(1, b"x", routing_key="q")
    method, properties, _ = get(client, "q", no_ack=False)
    assert properties.headers == {"x-delivery-count": 0}
    client.method(1, Basic.Reject(delivery_tag=method.delivery_tag, requeue=True))
    assert get(client, "q")[1].headers == {"x-delivery-count": 1}


def test_classic_queues_add_no_delivery_count() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q")
    client.publish(1, b"x", routing_key="q")
    method, properties, _ = get(client, "q", no_ack=False)
    client.method(1, Basic.Nack(delivery_tag=method.delivery_tag, requeue=True))
    assert get(client, "q")[1].headers is None


def test_past_the_delivery_limit_a_message_is_dead_lettered() -> None:
    node, _ = clocked_node()
    client = connect(node)
    fanout_to(client, "dlx", "dead")
    declare_queue(client, "q", **QUORUM, **{"x-delivery-limit": 2, "x-dead-letter-exchange": "dlx"})
    client.publish(1, b"poison", routing_key="q")
    deliveries = 0
    while (found := get(client, "q", no_ack=False)) is not None:
        deliveries += 1
        client.method(1, Basic.Nack(delivery_tag=found[0].delivery_tag, requeue=True))
    assert deliveries == 3  # the limit counts returns: delivered limit + 1 times
    _, properties, body = get(client, "dead")
    assert body == b"poison"
    assert properties.headers["x-death"][0]["reason"] == "delivery_limit"
    assert "x-delivery-count" not in properties.headers


def test_a_closed_channel_counts_as_a_return_and_without_dlx_the_message_is_dropped() -> None:
    node, _ = clocked_node()
    publisher = connect(node)
    declare_queue(publisher, "q", **QUORUM, **{"x-delivery-limit": 0})
    publisher.publish(1, b"poison", routing_key="q")
    consumer = connect(node)
    assert len(messages(consumer.method(1, Basic.Consume(queue="q", consumer_tag="c")))) == 1
    consumer.method(1, Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0))
    assert node.vhosts["/"].queues["q"].message_count == 0


def timeout_node(ms: int | None) -> tuple[Node, FakeClock]:
    return clocked_node(Config(limits=Limits(consumer_timeout=ms)))


def test_a_consumer_holding_a_delivery_too_long_has_its_channel_closed() -> None:
    node, clock = timeout_node(1000)
    publisher = connect(node)
    declare_queue(publisher, "q")
    slow, other = connect(node, channel=3), connect(node)
    slow.method(3, Basic.Consume(queue="q", consumer_tag="slow"))
    publisher.publish(1, b"x", routing_key="q")
    other.method(1, Basic.Consume(queue="q", consumer_tag="other"))
    session = slow.server
    for _ in range(10):
        clock.now += 0.1
        session.check_ack_timeouts(clock.now)
    assert not [m for _, m in slow.read() if isinstance(m, Channel.Close)]
    clock.now += 0.1
    session.check_ack_timeouts(clock.now)
    assert closed_with(slow.read()) == (
        406,
        "PRECONDITION_FAILED - delivery acknowledgement on channel 3 timed out. Timeout value used: 1000 ms. "
        "This timeout value can be configured, see consumers doc guide to learn more",
    )
    ((method, _, body),) = messages(other.read())
    assert (body, method.redelivered) == (b"x", True)


def test_acked_deliveries_do_not_time_out() -> None:
    node, clock = timeout_node(1000)
    client = connect(node)
    declare_queue(client, "q")
    client.method(1, Basic.Consume(queue="q", consumer_tag="c"))
    for n in range(30):
        (method, _, _), = messages(client.publish(1, b"%d" % n, routing_key="q"))
        clock.now += 0.1
        client.server.check_ack_timeouts(clock.now)
        client.method(1, Basic.Ack(delivery_tag=method.delivery_tag))
    assert not [m for _, m in client.read() if isinstance(m, Channel.Close)]


def test_a_queue_may_set_its_own_consumer_timeout() -> None:
    node, clock = timeout_node(None)
    client = connect(node)
    declare_queue(client, "q", **{"x-consumer-timeout": 500})
    declare_queue(client, "free")
    client.publish(1, b"x", routing_key="free")
    get(client, "free", no_ack=False)
    clock.now += 10
    client.server.check_ack_timeouts(clock.now)
    assert not [m for _, m in client.read() if isinstance(m, Channel.Close)]
    client.method(1, Basic.Ack(delivery_tag=1))
    client.publish(1, b"x", routing_key="q")
    get(client, "q", no_ack=False)
    for _ in range(3):  # the tick after the one that first saw the delivery, plus the timeout
        clock.now += 0.3
        client.server.check_ack_timeouts(clock.now)
    assert closed_with(client.read())[0] == 406


def test_delivery_marks_never_report_more_than_the_real_wait() -> None:
    marks = DeliveryMarks()
    assert marks.tick(10.0, None, 1) == 0.0
    # Tag 1 delivered just after the tick at 10: at 12 it has waited at least since the tick at 11.
    assert marks.tick(11.0, 1, 2) == 0.0
    assert marks.tick(12.0, 1, 3) == 1.0
    # Tag 1 acked; tag 2 was delivered before the tick at 12, so by 13 it waited at least 1 s.
    assert marks.tick(13.0, 2, 3) == 1.0
    # Tag 3 came after the last tick: nothing is known of its wait yet.
    assert marks.tick(14.0, 3, 4) == 0.0
