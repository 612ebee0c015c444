"""A 3-node cluster does what RabbitMQ 3.10's does for the cases below; the same tests run on a Leveret
cluster (default) and on the private 3-node RabbitMQ cluster (interop/rabbitmq_cluster.py) with
LEVERET_INTEROP_BROKER=rabbitmq:

- at-least-once dead-lettering from a quorum queue: what its leader held survives a kill -9 of that
  leader and reaches the target once; a target led by another node gets its copies, and the source
  settles them (its length limit has room again);
- a consumer the queue refuses (a classic queue with consumers, or with an exclusive consumer) gets 403 at
  once on every node; a quorum queue takes the exclusive flag and ignores it;
- two clients on different nodes asking for one classic queue's exclusive consumer at the same moment:
  one gets consume-ok, the other 403 on its consume (never consume-ok and a basic.cancel later);
- global QoS: a classic queue's consumers on every node share the channel's prefetch; a quorum queue
  refuses a consumer while it is on (540 NOT_IMPLEMENTED);
- a durable server-named queue is one queue in the cluster (declared on one node, published to on
  another, got from a third); a quorum one is refused (406).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from pamqp import frame
from pamqp.commands import Basic, Channel

from bench.clusters import BenchCluster, new_cluster
from interop.brokers import rabbitmq_server_script
from interop.clients import unique, wait_until
from interop.conftest import BROKER_KIND
from interop.rawclient import RawClient
from leveret.broker.server.local_cluster import etcd_binary

QUORUM = {"x-queue-type": "quorum"}
HELD = 5  # messages dead-lettered into nowhere, held by the source


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchCluster]:
    if BROKER_KIND == "rabbitmq" and rabbitmq_server_script() is None:
        pytest.skip("rabbitmq-server is not installed")
    if BROKER_KIND != "rabbitmq" and etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    started = new_cluster(BROKER_KIND, Path(tmp_path_factory.mktemp("parity")), 3)
    started.start()
    try:
        yield started
    finally:
        started.stop()


def connect(cluster: BenchCluster, index: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(cluster.url(index)))


def depth(cluster: BenchCluster, index: int, queue: str) -> int:
    with connect(cluster, index) as connection:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)


def at_least_once(exchange: str, **extra: Any) -> dict[str, Any]:
    return {**QUORUM, "x-dead-letter-exchange": exchange, "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish", **extra}


def reject_all(channel: Any, queue: str, bodies: list[bytes]) -> None:
    """Publish each (confirmed), take it and reject it: dead-lettered."""
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    for _ in bodies:
        method, _, _ = channel.basic_get(queue)
        assert method is not None
        channel.basic_reject(method.delivery_tag, requeue=False)


def drain(cluster: BenchCluster, index: int, queue: str) -> list[tuple[bytes, Any]]:
    with connect(cluster, index) as connection:
        channel = connection.channel()
        got: list[tuple[bytes, Any]] = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return got
            got.append((body, properties.headers))


def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(condition, timeout=timeout, what=what)


def test_dead_letters_held_by_a_killed_leader_reach_their_target_once(cluster: BenchCluster) -> None:
    source, target, exchange = unique("parity-held"), unique("parity-held-dead"), unique("parity-held-dlx")
    with connect(cluster, 0) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange, "fanout", durable=True)  # bound to nothing yet: held
        channel.queue_declare(source, durable=True, arguments=at_least_once(exchange))
    leader = cluster.leader_of(source)
    bodies = [b"held-%d" % i for i in range(HELD)]
    with connect(cluster, leader) as connection:
        reject_all(connection.channel(), source, bodies)
    assert depth(cluster, leader, source) == 0  # held for dead-lettering, not ready
    time.sleep(1.5)  # a retry or so with nowhere to go: replicated meanwhile, still held

    cluster.kill(leader)
    try:
        survivor = (leader + 1) % 3
        cluster.leader_of(source, other_than=leader)
        with connect(cluster, survivor) as connection:
            channel = connection.channel()
            channel.queue_declare(target, durable=True, arguments=QUORUM)
            channel.queue_bind(target, exchange)
        eventually(lambda: depth(cluster, survivor, target) == HELD, 30, "the held messages in the target")
        time.sleep(2.5)  # more retries would come by now: none duplicates
        assert depth(cluster, survivor, target) == HELD
        assert depth(cluster, survivor, source) == 0  # forwarded, not made ready again
        got = drain(cluster, survivor, target)
        assert sorted(body for body, _ in got) == bodies
        for _, headers in got:
            (death,) = headers["x-death"]
            assert (death["queue"], death["reason"]) == (source, "rejected")
    finally:
        cluster.restart(leader)
    with connect(cluster, leader) as connection:
        channel = connection.channel()
        channel.queue_delete(source)
        channel.queue_delete(target)
        channel.exchange_delete(exchange)


def queue_led_elsewhere(cluster: BenchCluster, prefix: str, other_than: int, via: int) -> str:
    """A new quorum queue, declared through `via`, whose leader is not `other_than`."""
    with connect(cluster, via) as connection:
        channel = connection.channel()
        for _ in range(20):
            name = unique(prefix)
            channel.queue_declare(name, durable=True, arguments=QUORUM)
            if cluster.leader_of(name) != other_than:
                return name
            channel.queue_delete(name)
    raise AssertionError(f"no queue led by a node other than {other_than}")


def test_dead_letters_into_a_queue_led_by_another_node_arrive_and_settle(cluster: BenchCluster) -> None:
    source, exchange = unique("parity-remote"), unique("parity-remote-dlx")
    with connect(cluster, 0) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange, "fanout", durable=True)
        arguments = at_least_once(exchange, **{"x-max-length": HELD})
        channel.queue_declare(source, durable=True, arguments=arguments)
    leader = cluster.leader_of(source)
    target = queue_led_elsewhere(cluster, "parity-remote-dead", leader, (leader + 1) % 3)
    with connect(cluster, leader) as connection:
        channel = connection.channel()
        channel.queue_bind(target, exchange)
        bodies = [b"remote-%d" % i for i in range(HELD)]
        reject_all(channel, source, bodies)
        eventually(lambda: depth(cluster, leader, target) == HELD, 20, "the copies in the target")
        # Settled at the source once the target's leader confirmed them: the length limit (which counts
        # held messages) has room again, so a publish is confirmed, not refused.
        def room_again() -> bool:
            try:
                channel.basic_publish("", source, b"after", pika.BasicProperties(delivery_mode=2))
            except pika.exceptions.NackError:
                time.sleep(0.2)
                return False
            return True

        eventually(room_again, 20, "room in the source after its dead-letters settled")
        assert depth(cluster, leader, source) == 1
        assert depth(cluster, leader, target) == HELD  # each once
        channel.queue_delete(source)
        channel.queue_delete(target)
        channel.exchange_delete(exchange)


def test_a_durable_server_named_queue_is_one_queue_in_the_cluster(cluster: BenchCluster) -> None:
    with connect(cluster, 0) as declaring:
        name = declaring.channel().queue_declare("", durable=True).method.queue
        assert name.startswith("amq.gen-")
        with connect(cluster, 1) as publishing:
            channel = publishing.channel()
            channel.confirm_delivery()
            for i in range(3):
                channel.basic_publish("", name, b"named-%d" % i, pika.BasicProperties(delivery_mode=2),
                                      mandatory=True)
        eventually(lambda: depth(cluster, 2, name) == 3, 10, "the messages counted on a third node")
        assert [body for body, _ in drain(cluster, 2, name)] == [b"named-0", b"named-1", b"named-2"]
        assert depth(cluster, 0, name) == 0
        with connect(cluster, 1) as other:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                other.channel().queue_declare("", durable=True, arguments=QUORUM)
        assert refused.value.reply_code == 406
        assert refused.value.reply_text == (
            "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue"
        )
        declaring.channel().queue_delete(name)


def refused_consume(
    cluster: BenchCluster, index: int, queue: str, *, exclusive: bool
) -> tuple[int, str, float]:
    """A basic.consume on node `index` that must be refused: its reply code and text, and how long it took."""
    with connect(cluster, index) as connection:
        channel = connection.channel()
        began = time.monotonic()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.basic_consume(queue, lambda *args: None, exclusive=exclusive)
        return refused.value.reply_code, refused.value.reply_text, time.monotonic() - began


def test_a_consumer_a_classic_queue_refuses_gets_403_at_once_on_every_node(cluster: BenchCluster) -> None:
    busy, locked = unique("parity-busy"), unique("parity-locked")
    with connect(cluster, 0) as holder:
        channel = holder.channel()
        channel.queue_declare(busy, durable=True)
        channel.queue_declare(locked, durable=True)
        channel.basic_consume(busy, lambda *args: None)
        channel.basic_consume(locked, lambda *args: None, exclusive=True)
        for index in range(3):
            for queue, exclusive in ((busy, True), (locked, False), (locked, True)):
                code, text, took = refused_consume(cluster, index, queue, exclusive=exclusive)
                assert code == 403
                assert text == f"ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use"
                assert took < 5.0  # answered, not consume-ok and a basic.cancel later
        channel.queue_delete(busy)
        channel.queue_delete(locked)


RACE_ROUNDS = 4  # per pair of nodes


def race_for_exclusive(cluster: BenchCluster, nodes: tuple[int, int], queue: str) -> list[Any]:
    """A client on each of `nodes` sends basic.consume(exclusive) for `queue` at the same moment (both
    frames written before either is answered): what each got back (Basic.ConsumeOk or Channel.Close)."""
    clients = [RawClient("127.0.0.1", cluster.port(index)) for index in nodes]
    try:
        consume = frame.marshal(Basic.Consume(queue=queue, exclusive=True), 1)
        for client in clients:
            client.sock.sendall(consume)
        answers = [client.receive() for client in clients]
        for client, answer in zip(clients, answers, strict=True):
            if isinstance(answer, Basic.ConsumeOk):
                client.send(1, Basic.Cancel(consumer_tag=answer.consumer_tag))
                client.expect(Basic.CancelOk)
        return answers
    finally:
        for client in clients:
            client.close()


def test_two_nodes_racing_for_an_exclusive_consumer_the_loser_gets_403(cluster: BenchCluster) -> None:
    with connect(cluster, 0) as connection:
        channel = connection.channel()
        for first, second in ((1, 2), (0, 1), (2, 0)):
            for _ in range(RACE_ROUNDS):
                queue = unique("parity-exclusive-race")
                channel.queue_declare(queue, durable=True)
                answers = race_for_exclusive(cluster, (first, second), queue)
                won = [answer for answer in answers if isinstance(answer, Basic.ConsumeOk)]
                lost = [answer for answer in answers if isinstance(answer, Channel.Close)]
                assert (len(won), len(lost)) == (1, 1), f"nodes {first} and {second}: {answers}"
                assert (lost[0].reply_code, lost[0].reply_text) == (
                    403, f"ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use"
                )
                channel.queue_delete(queue)


def test_a_quorum_queue_takes_an_exclusive_consumer_beside_others_everywhere(cluster: BenchCluster) -> None:
    queue = unique("parity-quorum-exclusive")
    with connect(cluster, 0) as holder:
        channel = holder.channel()
        channel.queue_declare(queue, durable=True, arguments=QUORUM)
        channel.basic_consume(queue, lambda *args: None, exclusive=True)
        for index in range(3):
            with connect(cluster, index) as connection:
                other = connection.channel()
                other.basic_consume(queue, lambda *args: None, exclusive=True)
                other.basic_consume(queue, lambda *args: None)
        channel.queue_delete(queue)


def test_global_qos_is_refused_by_quorum_queues_on_every_node(cluster: BenchCluster) -> None:
    first, second = unique("parity-gqos"), unique("parity-gqos")
    with connect(cluster, 0) as connection:
        channel = connection.channel()
        channel.queue_declare(first, durable=True, arguments=QUORUM)
        channel.queue_declare(second, durable=True, arguments=QUORUM)
    for index in range(3):
        with connect(cluster, index) as connection:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=3, global_qos=True)
            with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as refused:
                channel.basic_consume(first, lambda *args: None)
            assert (refused.value.reply_code, refused.value.reply_text) == (
                540, f"NOT_IMPLEMENTED - queue '{first}' in vhost '/' does not support global qos"
            )
    with connect(cluster, 1) as connection:
        channel = connection.channel()
        channel.basic_consume(first, lambda *args: None)
        channel.basic_qos(prefetch_count=3, global_qos=True)  # taken: the consumer before it goes on
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as refused:
            channel.basic_consume(second, lambda *args: None)
        assert refused.value.reply_code == 540
    with connect(cluster, 0) as connection:
        channel = connection.channel()
        channel.queue_delete(first)
        channel.queue_delete(second)


def test_global_qos_bounds_a_channels_classic_queues_on_every_node(cluster: BenchCluster) -> None:
    queues = [unique("parity-gqos-classic") for _ in range(3)]
    with connect(cluster, 0) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for queue in queues:
            channel.queue_declare(queue, durable=True)
            for i in range(10):
                channel.basic_publish("", queue, b"m%d" % i, pika.BasicProperties(delivery_mode=2))
    for index in range(3):
        with connect(cluster, index) as connection:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=4, global_qos=True)
            got: list[Any] = []
            for queue in queues:
                channel.basic_consume(queue, lambda ch, method, properties, body, got=got: got.append(method))
            deadline = time.monotonic() + 10
            while len(got) < 4 and time.monotonic() < deadline:
                connection.process_data_events(0.1)
            connection.process_data_events(1.0)  # time for any delivery over the limit to come
            assert len(got) == 4, f"node {index}: {len(got)} delivered under a global prefetch of 4"
            channel.basic_ack(got[0].delivery_tag)
            deadline = time.monotonic() + 10
            while len(got) < 5 and time.monotonic() < deadline:
                connection.process_data_events(0.1)
            connection.process_data_events(1.0)
            assert len(got) == 5, f"node {index}: {len(got)} delivered after one ack"
    with connect(cluster, 0) as connection:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
