"""Message TTL (queue and per message) and queue expiry, on a hand-driven clock."""

from __future__ import annotations

import pytest
from pamqp.commands import Basic, Channel, Queue

from leveret.amqp.properties import properties_from_dict
from leveret.broker.message import Message
from leveret.broker.queues.deadlines import RESOLUTION
from leveret.broker.queues.lifecycle import EXPIRY_BATCH
from leveret.broker.queues.queue import Entry
from leveret.broker.queues.queue import Queue as PlainQueue
from tests.lifecycle_support import bodies, clocked_node, closed_with, declare_queue, fanout_to, get, messages
from tests.peers import methods
from tests.test_session import connect


def expiring(ms: int | str) -> Basic.Properties:
    return Basic.Properties(expiration=str(ms))


def test_queue_ttl_expires_messages_without_a_consumer() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-message-ttl": 1000})
    client.publish(1, b"a", routing_key="q")
    clock.advance(0.5)
    client.publish(1, b"b", routing_key="q")
    queue = node.vhosts["/"].queues["q"]
    assert queue.message_count == 2
    clock.advance(0.5 + RESOLUTION)
    assert [e.message.body for e in queue.ready] == [b"b"]
    clock.advance(0.5)
    assert queue.message_count == 0


def test_an_expired_message_is_never_delivered_even_before_its_timer() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-message-ttl": 100})
    client.publish(1, b"old", routing_key="q")
    clock.now += 0.2  # no timer fired yet
    assert get(client, "q") is None
    client.publish(1, b"new", routing_key="q")
    clock.now += 0.2
    frames = client.method(1, Basic.Consume(queue="q", consumer_tag="c"))
    assert bodies(frames) == []


def test_per_message_expiration_and_the_lower_ttl_wins() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "short", **{"x-message-ttl": 100})
    declare_queue(client, "long", **{"x-message-ttl": 10_000})
    client.publish(1, b"queue ttl wins", routing_key="short", properties=expiring(5000))
    client.publish(1, b"message ttl wins", routing_key="long", properties=expiring(200))
    clock.advance(0.15)
    assert node.vhosts["/"].queues["short"].message_count == 0
    assert node.vhosts["/"].queues["long"].message_count == 1
    clock.advance(0.1)
    assert node.vhosts["/"].queues["long"].message_count == 0


def test_a_plain_queue_takes_on_ttl_with_its_first_expiring_message() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "plain")
    queue = node.vhosts["/"].queues["plain"]
    client.publish(1, b"kept", routing_key="plain")
    assert type(queue) is PlainQueue
    client.publish(1, b"brief", routing_key="plain", properties=expiring(50))
    client.publish(1, b"after", routing_key="plain")
    assert queue.lifecycle is not None
    assert bodies(client.method(1, Basic.Get(queue="plain", no_ack=True))) == [b"kept"]
    clock.advance(0.1)
    assert [e.message.body for e in queue.ready] == [b"after"]


def test_only_the_head_expires_but_nothing_expired_is_delivered() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "q")
    client.publish(1, b"long", routing_key="q", properties=expiring(10_000))
    client.publish(1, b"short", routing_key="q", properties=expiring(100))
    clock.advance(1)
    # As in RabbitMQ: "short" is behind a message that lives longer, so it stays until it is the head.
    assert node.vhosts["/"].queues["q"].message_count == 2
    assert bodies(client.method(1, Basic.Consume(queue="q", consumer_tag="c", no_ack=True))) == [b"long"]
    assert node.vhosts["/"].queues["q"].message_count == 0


def test_ttl_zero_delivers_only_to_a_consumer_ready_now() -> None:
    node, clock = clocked_node()
    client = connect(node)
    fanout_to(client, "dlx", "dead")
    declare_queue(client, "now", **{"x-message-ttl": 0, "x-dead-letter-exchange": "dlx"})
    client.publish(1, b"nobody", routing_key="now")
    assert node.vhosts["/"].queues["now"].message_count == 0
    assert node.vhosts["/"].queues["dead"].message_count == 1
    client.method(1, Basic.Consume(queue="now", consumer_tag="c"))
    assert bodies(client.publish(1, b"taken", routing_key="now")) == [b"taken"]


def test_per_message_expiration_zero_expires_at_once_without_a_consumer() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q")
    client.publish(1, b"x", routing_key="q", properties=expiring(0))
    assert node.vhosts["/"].queues["q"].message_count == 0


def test_a_requeued_message_keeps_its_expiry() -> None:
    node, clock = clocked_node()
    client = connect(node)
    fanout_to(client, "dlx", "dead")
    declare_queue(client, "q", **{"x-message-ttl": 1000, "x-dead-letter-exchange": "dlx"})
    client.publish(1, b"x", routing_key="q")
    method, _, _ = get(client, "q", no_ack=False)
    clock.advance(2)
    client.method(1, Basic.Nack(delivery_tag=method.delivery_tag, requeue=True))
    assert node.vhosts["/"].queues["q"].message_count == 0
    assert node.vhosts["/"].queues["dead"].message_count == 1


def test_one_timer_per_queue_however_many_messages() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-message-ttl": 1000})
    for n in range(500):
        clock.now += 0.001
        client.publish(1, b"%d" % n, routing_key="q")
    assert len(node.deadlines._pending) == 1
    assert len(node.deadlines._heap) == 1


def test_a_large_expiry_is_done_in_batches() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-message-ttl": 10})
    queue = node.vhosts["/"].queues["q"]
    for _ in range(EXPIRY_BATCH + 10):
        client.publish(1, b"x", routing_key="q")
    clock.advance(1)
    assert queue.message_count == 10  # the rest waits for the next turn of the timer loop
    assert node.deadlines.next_deadline() is not None
    clock.advance(0)
    assert queue.message_count == 0


@pytest.mark.parametrize(
    ("expiration", "problem"),
    [
        ("abc", "no_integer"),
        (" 5", "no_integer"),
        ("-1", "{value_negative,-1}"),
        ("1.5", '{leftover_string,".5"}'),
        ("5 ", '{leftover_string," "}'),
        ("315360000001", "{value_too_large,315360000001}"),
    ],
)
def test_an_invalid_expiration_closes_the_channel_as_rabbitmq_does(expiration: str, problem: str) -> None:
    node, _ = clocked_node()
    client = connect(node)
    frames = client.publish(1, b"x", routing_key="q", properties=expiring(expiration))
    assert closed_with(frames) == (406, f"PRECONDITION_FAILED - invalid expiration '{expiration}': {problem}")


@pytest.mark.parametrize("expiration", ["+5", "007", "0"])
def test_expirations_erlang_reads_as_integers_are_accepted(expiration: str) -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare_queue(client, "q")
    frames = client.publish(1, b"x", routing_key="q", properties=expiring(expiration))
    assert not any(isinstance(m, Channel.Close) for m in methods(frames))


def test_an_unused_queue_expires() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-expires": 1000})
    client.publish(1, b"still here", routing_key="q")
    clock.advance(0.9)
    assert "q" in node.vhosts["/"].queues
    clock.advance(0.1 + RESOLUTION)
    assert "q" not in node.vhosts["/"].queues


@pytest.mark.parametrize("use", ["redeclare", "passive", "get"])
def test_declare_and_get_keep_a_queue_from_expiring(use: str) -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-expires": 1000})
    clock.advance(0.8)
    if use == "redeclare":
        declare_queue(client, "q", **{"x-expires": 1000})
    elif use == "passive":
        client.method(1, Queue.Declare(queue="q", passive=True))
    else:
        get(client, "q")
    clock.advance(0.8)
    assert "q" in node.vhosts["/"].queues
    clock.advance(0.3)
    assert "q" not in node.vhosts["/"].queues


def test_a_queue_with_consumers_does_not_expire_until_they_go() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-expires": 1000})
    client.method(1, Basic.Consume(queue="q", consumer_tag="c"))
    clock.advance(5)
    assert "q" in node.vhosts["/"].queues
    client.method(1, Basic.Cancel(consumer_tag="c"))
    clock.advance(0.9)
    assert "q" in node.vhosts["/"].queues
    clock.advance(0.2)
    assert "q" not in node.vhosts["/"].queues


def test_an_expired_queue_deletes_its_deadline() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-expires": 100, "x-message-ttl": 60_000})
    client.publish(1, b"x", routing_key="q")
    clock.advance(0.2)
    assert node.deadlines.next_deadline() is None


def test_recovered_messages_logged_without_a_deadline_get_their_ttl_from_the_recovery() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-message-ttl": 1000})
    queue = node.vhosts["/"].queues["q"]
    raw = properties_from_dict({"expiration": "300"})
    recovered = [Entry(Message("", "q", raw, b"short"), 1), Entry(Message("", "q", b"\x00\x00", b"long"), 2)]
    queue.restore(recovered, next_seq=3)
    clock.advance(0.5)
    assert [e.message.body for e in queue.ready] == [b"long"]
    client.publish(1, b"new", routing_key="q")
    assert [e.seq for e in queue.ready] == [2, 3]
    assert [b for _, _, b in messages(client.method(1, Basic.Get(queue="q", no_ack=True)))] == [b"long"]


def test_recovered_messages_keep_the_time_their_logged_deadlines_leave() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-message-ttl": 1000})
    queue = node.vhosts["/"].queues["q"]
    payloads = (b"a", b"b", b"c")
    recovered = [Entry(Message("", "q", b"\x00\x00", body), seq) for seq, body in enumerate(payloads, 1)]
    # Ran out while down; 0.3 s left; logged without a deadline (its TTL counts from now).
    queue.restore(recovered, next_seq=4, expires_in=[-5.0, 0.3, None])
    due = node.deadlines.next_deadline()
    assert due is not None and due <= clock.now  # due already: the timers take it first thing
    clock.advance(0.01)
    assert [e.message.body for e in queue.ready] == [b"b", b"c"]
    clock.advance(0.3)
    assert [e.message.body for e in queue.ready] == [b"c"]
    clock.advance(0.7)
    assert [e.message.body for e in queue.ready] == []


def test_a_recovered_deadline_never_lies_further_than_a_whole_ttl() -> None:
    """The wall clock went back while the broker was down: the logged deadline is far off."""
    node, clock = clocked_node()
    client = connect(node)
    declare_queue(client, "q", **{"x-message-ttl": 1000})
    queue = node.vhosts["/"].queues["q"]
    queue.restore([Entry(Message("", "q", b"\x00\x00", b"m"), 1)], next_seq=2, expires_in=[3600.0])
    clock.advance(1.01)
    assert queue.message_count == 0


def test_deleted_queues_do_not_pile_up_in_the_timer_heap() -> None:
    node, _ = clocked_node()
    client = connect(node)
    for n in range(1000):
        declare_queue(client, f"reply-{n}", **{"x-expires": 86_400_000})
        client.method(1, Queue.Delete(queue=f"reply-{n}"))
    assert len(node.deadlines._heap) <= 64
