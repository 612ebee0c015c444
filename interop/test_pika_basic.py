"""pika BlockingConnection: the everyday queue operations, acks, prefetch, transactions and RPC."""

from __future__ import annotations

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic

from interop.brokers import Broker
from interop.clients import pika_connection, pump_until, queue_depth, unique, wait_until


def publish(channel: BlockingChannel, queue: str, *bodies: bytes) -> None:
    for body in bodies:
        channel.basic_publish("", queue, body)


def test_declare_publish_get_ack(channel: BlockingChannel) -> None:
    name = unique("basic")
    declared = channel.queue_declare(name, auto_delete=False)
    assert (declared.method.queue, declared.method.message_count, declared.method.consumer_count) == (
        name,
        0,
        0,
    )
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={"tenant": "a", "attempt": 3, "nested": {"ok": True}},
        delivery_mode=2,
        priority=4,
        correlation_id="corr-1",
        reply_to="replies",
        expiration="60000",
        message_id="msg-1",
        timestamp=1_700_000_000,
        type="created",
        user_id="guest",
        app_id="interop",
    )
    channel.basic_publish("", name, b'{"x": 1}', props)
    wait_until(lambda: queue_depth(channel, name) == 1, what="the message to be queued")

    method, got, body = channel.basic_get(name)
    assert isinstance(method, Basic.GetOk)
    assert (body, method.redelivered, method.exchange, method.routing_key) == (b'{"x": 1}', False, "", name)
    assert method.message_count == 0
    for field in (
        "content_type",
        "content_encoding",
        "headers",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ):
        assert getattr(got, field) == getattr(props, field), field
    channel.basic_ack(method.delivery_tag)
    assert channel.basic_get(name) == (None, None, None)
    channel.queue_delete(name)


def test_get_ok_message_count_and_get_empty(channel: BlockingChannel) -> None:
    name = unique("get")
    channel.queue_declare(name, exclusive=True)
    publish(channel, name, b"1", b"2", b"3")
    wait_until(lambda: queue_depth(channel, name) == 3, what="3 queued messages")
    counts = []
    for expected in (b"1", b"2", b"3"):
        method, _props, body = channel.basic_get(name, auto_ack=True)
        assert body == expected
        counts.append(method.message_count)
    assert counts == [2, 1, 0]
    assert channel.basic_get(name, auto_ack=True) == (None, None, None)


def test_consume_and_ack(channel: BlockingChannel) -> None:
    name = unique("consume")
    channel.queue_declare(name, exclusive=True)
    bodies = [f"m{i}".encode() for i in range(20)]
    publish(channel, name, *bodies)
    received: list[bytes] = []
    for method, _props, body in channel.consume(name, inactivity_timeout=5):
        assert method is not None, f"only {len(received)} of 20 delivered"
        assert method.redelivered is False
        received.append(body)
        channel.basic_ack(method.delivery_tag)
        if len(received) == len(bodies):
            break
    channel.cancel()
    assert received == bodies  # one publisher, one queue: FIFO
    assert queue_depth(channel, name) == 0


def test_round_robin_three_consumers_prefetch_one(connection: pika.BlockingConnection) -> None:
    name = unique("rr")
    setup = connection.channel()
    setup.queue_declare(name, exclusive=True)
    publish(setup, name, *(str(i).encode() for i in range(30)))
    wait_until(lambda: queue_depth(setup, name) == 30, what="30 queued messages")

    channels = [connection.channel() for _ in range(3)]
    held: list[list[Basic.Deliver]] = [[] for _ in channels]
    counts = [0, 0, 0]
    for index, ch in enumerate(channels):
        ch.basic_qos(prefetch_count=1)
        ch.basic_consume(name, lambda _ch, method, _props, _body, i=index: held[i].append(method))

    # Acks go out in rounds, once every consumer holds its one message: with prefetch 1 honoured and
    # every consumer served, each gets exactly one per round and 10 in all, whatever the timing.
    for round_number in range(10):
        pump_until(connection, lambda: all(held), what=f"round {round_number}")
        connection.process_data_events(0.1)
        assert [len(h) for h in held] == [1, 1, 1], f"round {round_number}: prefetch 1 exceeded"
        for index, ch in enumerate(channels):
            ch.basic_ack(held[index].pop().delivery_tag)
            counts[index] += 1
    connection.process_data_events(0.3)
    assert held == [[], [], []]
    assert counts == [10, 10, 10]
    assert queue_depth(setup, name) == 0


def test_prefetch_is_honoured(channel: BlockingChannel, connection: pika.BlockingConnection) -> None:
    name = unique("qos")
    channel.queue_declare(name, exclusive=True)
    publish(channel, name, *(str(i).encode() for i in range(20)))
    wait_until(lambda: queue_depth(channel, name) == 20, what="20 queued messages")
    channel.basic_qos(prefetch_count=5)
    delivered: list[Basic.Deliver] = []
    channel.basic_consume(name, lambda _ch, method, _props, _body: delivered.append(method))

    connection.process_data_events(0.5)
    assert len(delivered) == 5
    channel.basic_ack(delivered[0].delivery_tag)  # frees one slot: exactly one more
    connection.process_data_events(0.5)
    assert len(delivered) == 6
    channel.basic_ack(delivered[-1].delivery_tag, multiple=True)  # frees all five
    connection.process_data_events(0.5)
    assert len(delivered) == 11
    assert [int(m.delivery_tag) for m in delivered] == list(range(1, 12))


def test_purge_and_delete_report_counts(channel: BlockingChannel) -> None:
    name = unique("purge")
    channel.queue_declare(name)
    publish(channel, name, *[b"x"] * 7)
    wait_until(lambda: queue_depth(channel, name) == 7, what="7 queued messages")
    assert channel.queue_purge(name).method.message_count == 7
    assert queue_depth(channel, name) == 0
    publish(channel, name, *[b"y"] * 4)
    wait_until(lambda: queue_depth(channel, name) == 4, what="4 queued messages")
    assert channel.queue_delete(name).method.message_count == 4


def test_transactions_commit_and_rollback(connection: pika.BlockingConnection) -> None:
    name = unique("tx")
    observer = connection.channel()
    observer.queue_declare(name, exclusive=True)
    tx = connection.channel()
    tx.tx_select()

    publish(tx, name, b"a", b"b", b"c")
    assert queue_depth(observer, name) == 0  # nothing is visible before commit
    tx.tx_rollback()
    assert queue_depth(observer, name) == 0
    publish(tx, name, b"d", b"e")
    tx.tx_commit()
    assert queue_depth(observer, name) == 2
    assert [observer.basic_get(name, auto_ack=True)[2] for _ in range(2)] == [b"d", b"e"]

    # Acks are transactional too: a committed ack removes the message for good.
    publish(observer, name, b"f")
    wait_until(lambda: queue_depth(observer, name) == 1, what="message f")
    method, _props, _body = tx.basic_get(name)
    tx.basic_ack(method.delivery_tag)
    tx.tx_commit()
    tx.close()
    assert queue_depth(observer, name) == 0


def test_rolled_back_ack_leaves_message_unacked(connection: pika.BlockingConnection) -> None:
    name = unique("txack")
    observer = connection.channel()
    observer.queue_declare(name, exclusive=True)
    publish(observer, name, b"g")
    wait_until(lambda: queue_depth(observer, name) == 1, what="message g")
    tx = connection.channel()
    tx.tx_select()
    method, _props, _body = tx.basic_get(name)
    tx.basic_ack(method.delivery_tag)
    tx.tx_rollback()
    tx.close()  # the still-unacked message goes back to the queue
    wait_until(lambda: queue_depth(observer, name) == 1, what="the requeue on channel close")
    method, _props, body = observer.basic_get(name, auto_ack=True)
    assert (body, method.redelivered) == (b"g", True)


def test_unknown_ack_tag_in_a_transaction_discards_its_publishes(connection: pika.BlockingConnection) -> None:
    """The bad tag closes the channel when the ack arrives, as RabbitMQ does: the transaction's publishes
    are never routed, and the deliveries it had acked go back to the queue."""
    name = unique("txbad")
    observer = connection.channel()
    observer.queue_declare(name, exclusive=True)
    publish(observer, name, b"old")
    wait_until(lambda: queue_depth(observer, name) == 1, what="message old")
    tx = connection.channel()
    tx.tx_select()
    method, _props, _body = tx.basic_get(name)
    tx.basic_ack(method.delivery_tag)
    publish(tx, name, b"never")
    tx.basic_ack(method.delivery_tag + 100)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        tx.tx_commit()
    bad = method.delivery_tag + 100
    error = closed.value
    assert (error.reply_code, error.reply_text) == (406, f"PRECONDITION_FAILED - unknown delivery tag {bad}")
    wait_until(lambda: queue_depth(observer, name) == 1, what="the requeue of the uncommitted ack")
    method, _props, body = observer.basic_get(name, auto_ack=True)
    assert (body, method.redelivered) == (b"old", True)
    assert queue_depth(observer, name) == 0


@pytest.mark.parametrize("how", ["reject", "nack"])
def test_requeue_sets_redelivered(channel: BlockingChannel, how: str) -> None:
    name = unique(how)
    channel.queue_declare(name, exclusive=True)
    publish(channel, name, b"1", b"2", b"3")
    wait_until(lambda: queue_depth(channel, name) == 3, what="3 queued messages")
    tags = [channel.basic_get(name)[0].delivery_tag for _ in range(3)]
    if how == "reject":
        for tag in tags:
            channel.basic_reject(tag, requeue=True)
    else:
        channel.basic_nack(tags[-1], multiple=True, requeue=True)
    wait_until(lambda: queue_depth(channel, name) == 3, what="the requeue")
    again = [channel.basic_get(name, auto_ack=True) for _ in range(3)]
    assert sorted(body for _m, _p, body in again) == [b"1", b"2", b"3"]
    assert all(method.redelivered for method, _p, _b in again)


@pytest.mark.parametrize("how", ["reject", "nack"])
def test_discard_without_requeue(channel: BlockingChannel, how: str) -> None:
    name = unique(how)
    channel.queue_declare(name, exclusive=True)
    publish(channel, name, b"1")
    wait_until(lambda: queue_depth(channel, name) == 1, what="the message")
    tag = channel.basic_get(name)[0].delivery_tag
    if how == "reject":
        channel.basic_reject(tag, requeue=False)
    else:
        channel.basic_nack(tag, requeue=False)
    assert queue_depth(channel, name) == 0
    assert channel.basic_get(name) == (None, None, None)


def test_consumer_cancel_notification_on_queue_delete(connection: pika.BlockingConnection) -> None:
    name = unique("cancel")
    consuming = connection.channel()
    consuming.queue_declare(name)
    cancels: list[Basic.Cancel] = []
    consuming.add_on_cancel_callback(lambda frame: cancels.append(frame.method))
    tag = consuming.basic_consume(name, lambda *_: None)

    connection.channel().queue_delete(name)
    pump_until(connection, lambda: bool(cancels), what="basic.cancel")
    assert cancels[0].consumer_tag == tag
    assert consuming.is_open  # a cancel notification does not close the channel


def test_direct_reply_to_rpc(broker: Broker, connection: pika.BlockingConnection) -> None:
    request_queue = unique("rpc")
    client = connection.channel()
    client.queue_declare(request_queue)
    replies: list[tuple[pika.BasicProperties, bytes]] = []
    # The pseudo-queue is consumed in no-ack mode and needs no declaration.
    client.basic_consume(
        "amq.rabbitmq.reply-to", lambda _c, _m, props, body: replies.append((props, body)), auto_ack=True
    )
    client.basic_publish(
        "", request_queue, b"21", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c-1")
    )

    with pika_connection(broker.url) as server_connection:
        server = server_connection.channel()
        wait_until(lambda: queue_depth(server, request_queue) == 1, what="the request")
        method, props, body = server.basic_get(request_queue, auto_ack=True)
        assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
        server.basic_publish(
            "",
            props.reply_to,
            str(int(body) * 2).encode(),
            pika.BasicProperties(correlation_id=props.correlation_id),
        )

    pump_until(connection, lambda: bool(replies), what="the reply")
    assert replies[0][0].correlation_id == "c-1"
    assert replies[0][1] == b"42"
    client.queue_delete(request_queue)
