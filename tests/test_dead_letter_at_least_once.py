"""At-least-once dead-lettering (x-dead-letter-strategy on quorum queues, RabbitMQ 3.10's rabbit_fifo_dlx):
the source queue holds a dead-lettered message until every target queue has it, durably."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pamqp.commands import Basic, Exchange, Queue

from leveret.broker.node import Node
from leveret.broker.persistence import Persistence
from leveret.broker.queues.outbox import RETRY_INTERVAL
from leveret.broker.queues.queue import Queue as BrokerQueue
from leveret.config import Config
from tests.lifecycle_support import FakeClock, clocked_node, get
from tests.peers import ClientPeer, methods
from tests.test_session import connect

AT_LEAST_ONCE = {
    "x-queue-type": "quorum",
    "x-dead-letter-exchange": "dlx",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


def declare(client: ClientPeer, name: str, **arguments: Any) -> None:
    reply = methods(client.method(1, Queue.Declare(queue=name, durable=True, arguments=arguments)))
    assert isinstance(reply[-1], Queue.DeclareOk), reply


def reject_one(client: ClientPeer, queue: str, body: bytes) -> None:
    client.publish(1, body, routing_key=queue, properties=Basic.Properties(delivery_mode=2))
    found = get(client, queue, no_ack=False)
    assert found is not None
    client.method(1, Basic.Reject(delivery_tag=found[0].delivery_tag, requeue=False))


def declare_target(client: ClientPeer) -> None:
    client.method(1, Exchange.Declare(exchange="dlx", exchange_type="fanout", durable=True))
    declare(client, "dead")
    client.method(1, Queue.Bind(queue="dead", exchange="dlx"))


def held(node: Node, name: str) -> int:
    queue: BrokerQueue = node.vhosts["/"].queues[name]
    assert queue.lifecycle is not None and queue.lifecycle.outbox is not None
    return len(queue.lifecycle.outbox)


def drain(client: ClientPeer, queue: str) -> list[bytes]:
    got = []
    while (found := get(client, queue)) is not None:
        got.append(found[2])
    return got


def test_a_message_with_no_target_stays_until_the_target_exists_then_arrives_once() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare(client, "work", **AT_LEAST_ONCE)
    reject_one(client, "work", b"keep me")
    assert held(node, "work") == 1
    assert node.vhosts["/"].queues["work"].message_count == 0  # held, not ready
    clock.advance(RETRY_INTERVAL * 3)  # retried, still nowhere to go
    assert held(node, "work") == 1
    declare_target(client)
    clock.advance(RETRY_INTERVAL + 0.1)
    assert held(node, "work") == 0
    clock.advance(RETRY_INTERVAL * 3)
    assert drain(client, "dead") == [b"keep me"]


def test_without_reject_publish_it_is_at_most_once_as_in_rabbitmq() -> None:
    node, clock = clocked_node()
    client = connect(node)
    declare(client, "work", **{**AT_LEAST_ONCE, "x-overflow": "drop-head"})
    reject_one(client, "work", b"lost")
    queue = node.vhosts["/"].queues["work"]
    assert queue.lifecycle is not None and queue.lifecycle.outbox is None
    declare_target(client)
    clock.advance(RETRY_INTERVAL * 3)
    assert drain(client, "dead") == []


def test_held_dead_letters_count_towards_the_length_limit() -> None:
    node, _ = clocked_node()
    client = connect(node)
    declare(client, "work", **AT_LEAST_ONCE, **{"x-max-length": 1})
    reject_one(client, "work", b"held")
    client.publish(1, b"refused", routing_key="work")  # one more than x-max-length, with the held one
    assert node.vhosts["/"].queues["work"].message_count == 0


def test_a_durable_target_settles_the_message_only_after_its_commit(tmp_path: Path) -> None:
    clock = FakeClock()
    node = Node(replace(Config(), data_dir=str(tmp_path)), clock=clock)
    clock.node = node
    persistence = Persistence(tmp_path)
    node.attach_persistence(persistence)
    persistence.recover(node)
    client = connect(node)
    declare_target(client)
    declare(client, "work", **AT_LEAST_ONCE)
    commit(node, persistence)
    reject_one(client, "work", b"durable")
    assert held(node, "work") == 1  # in the target's log, not yet fsynced
    commit(node, persistence)
    assert held(node, "work") == 0
    persistence.close()


def commit(node: Node, persistence: Persistence) -> None:
    while (batch := persistence.begin()) is not None:
        batch.run()
        node.commit_completed(persistence.complete(batch), batch.error)


def durable_node(tmp_path: Path) -> tuple[Node, FakeClock, Persistence]:
    clock = FakeClock()
    node = Node(replace(Config(), data_dir=str(tmp_path)), clock=clock)
    clock.node = node
    persistence = Persistence(tmp_path)
    node.attach_persistence(persistence)
    persistence.recover(node)
    return node, clock, persistence


def test_a_held_dead_letter_comes_back_held_after_a_crash_and_is_forwarded_once(tmp_path: Path) -> None:
    node, _, persistence = durable_node(tmp_path)
    client = connect(node)
    declare(client, "work", **AT_LEAST_ONCE)
    reject_one(client, "work", b"held")
    commit(node, persistence)
    assert held(node, "work") == 1
    # A crash: no clean stop, the log as the last commit left it.

    node, clock, persistence = durable_node(tmp_path)
    queue: BrokerQueue = node.vhosts["/"].queues["work"]
    assert queue.message_count == 0 and held(node, "work") == 1  # held, not ready
    client = connect(node)
    assert get(client, "work") is None
    declare_target(client)
    commit(node, persistence)
    clock.advance(RETRY_INTERVAL + 0.1)  # the first retry forwards it
    commit(node, persistence)  # the target's copy is durable: the source settles it
    assert held(node, "work") == 0
    clock.advance(RETRY_INTERVAL * 3)
    assert drain(client, "dead") == [b"held"]
    commit(node, persistence)
    persistence.close()

    node, clock, _ = durable_node(tmp_path)
    assert held(node, "work") == 0 and node.vhosts["/"].queues["work"].message_count == 0
    clock.advance(RETRY_INTERVAL * 3)
    assert node.vhosts["/"].queues["dead"].message_count == 0


def test_a_retry_goes_only_to_the_targets_that_refused() -> None:
    node, clock = clocked_node()
    client = connect(node)
    client.method(1, Exchange.Declare(exchange="dlx", exchange_type="fanout", durable=True))
    declare(client, "open")
    declare(client, "full", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    client.publish(1, b"filler", routing_key="full")
    for target in ("open", "full"):
        client.method(1, Queue.Bind(queue=target, exchange="dlx"))
    declare(client, "work", **AT_LEAST_ONCE)
    reject_one(client, "work", b"to both")
    clock.advance(RETRY_INTERVAL * 4)  # the full one refused every time
    queues = node.vhosts["/"].queues
    assert (queues["open"].message_count, queues["full"].message_count, held(node, "work")) == (1, 1, 1)
    assert get(client, "full") is not None  # the filler: room now
    clock.advance(RETRY_INTERVAL + 0.1)
    assert held(node, "work") == 0
    assert drain(client, "open") == [b"to both"]
    assert drain(client, "full") == [b"to both"]
