"""A consumer process dies with unacked messages: the broker redelivers them, and loses nothing."""

from __future__ import annotations

from pathlib import Path

from pika.adapters.blocking_connection import BlockingChannel

from interop.brokers import Broker
from interop.clients import client_env, client_process, python_client, queue_depth, stage, unique, wait_until

TOTAL, PREFETCH, ACKED = 50, 10, 5


def test_unacked_messages_of_a_killed_consumer_are_redelivered(
    broker: Broker, channel: BlockingChannel, tmp_path: Path
) -> None:
    name = unique("redeliver")
    channel.queue_declare(name)
    channel.confirm_delivery()
    for i in range(TOTAL):
        channel.basic_publish("", name, str(i).encode())

    stage(tmp_path, "pika_holding_consumer.py")
    args = python_client("pika_holding_consumer.py", name, str(PREFETCH), str(ACKED))
    with client_process(args, tmp_path, client_env(broker.url)) as consumer:
        consumer.expect(lambda line: line == "READY")
        lines = consumer.output
        acked = {int(line.split()[1]) for line in lines if line.startswith("ack ")}
        held = {int(line.split()[1]) for line in lines if line.startswith("hold ")}
        assert (len(acked), len(held)) == (ACKED, PREFETCH), consumer.transcript()
        consumer.kill()

    # The dead consumer's unacked window returns to the queue with everything never delivered.
    remaining = TOTAL - ACKED
    wait_until(
        lambda: queue_depth(channel, name) == remaining, what="the requeue of the killed consumer's messages"
    )
    redelivered: dict[int, bool] = {}
    for method, _props, body in channel.consume(name, inactivity_timeout=5):
        assert method is not None, f"only {len(redelivered)} of {remaining} arrived"
        assert int(body) not in redelivered, f"{int(body)} delivered twice"
        redelivered[int(body)] = method.redelivered
        channel.basic_ack(method.delivery_tag)
        if len(redelivered) == remaining:
            break
    channel.cancel()

    assert acked.isdisjoint(redelivered), "an acked message came back"
    assert acked | set(redelivered) == set(range(TOTAL)), "a message was lost"
    assert {n for n, flag in redelivered.items() if flag} == held
    assert queue_depth(channel, name) == 0
    channel.queue_delete(name)
