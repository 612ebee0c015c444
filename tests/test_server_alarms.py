"""Resource alarms in the trio server, over real loopback sockets: a blocked publisher is not read, its
heartbeats are not expected while blocked, other connections keep flowing, and the sampling task."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trio
from pamqp.commands import Basic, Channel, Connection, Queue
from pamqp.heartbeat import Heartbeat
from trio.testing import MockClock

from leveret.broker import memory_release
from leveret.broker.alarms import MEMORY, MEMORY_CHECK_INTERVAL, ResourceMonitor
from leveret.broker.node import Node
from leveret.broker.server.listener import serve_amqp
from leveret.broker.server.resources import (
    SystemSampler,
    build_monitor,
    run_resource_monitor,
    total_memory,
)
from leveret.config import Config, Resources
from tests.test_alarms import FakeSampler
from tests.trio_client import TrioClient


async def connect(port: int, *, heartbeat: int = 0) -> TrioClient:
    client = TrioClient(await trio.open_tcp_stream("127.0.0.1", port))
    await client.handshake(heartbeat, capabilities={"connection.blocked": True})
    await client.send(1, Channel.Open())
    assert isinstance(await client.receive(), Channel.OpenOk)
    return client


async def serve(nursery: trio.Nursery, node: Node) -> int:
    listeners = await nursery.start(serve_amqp, node, "127.0.0.1", 0)
    return listeners[0].socket.getsockname()[1]


async def test_a_blocked_publisher_is_not_read_while_others_drain_the_queue() -> None:
    node = Node(Config())
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, node)
        publisher, consumer = await connect(port), await connect(port)
        await publisher.send(1, Queue.Declare(queue="q"))
        assert isinstance(await publisher.receive(), Queue.DeclareOk)
        await publisher.publish(b"before", "q")  # before the alarm: no reason to block
        # Sent is not received: a broker that read "before" only after the alarm was set would rightly hold
        # it, as RabbitMQ does. The answer to a later method on the connection says it was routed.
        await publisher.send(1, Queue.Declare(queue="q", passive=True))
        declared = await publisher.receive()
        assert isinstance(declared, Queue.DeclareOk) and declared.message_count == 1

        node.alarms.memory_sampled(2, 1)
        await publisher.publish(b"first", "q")
        blocked = await publisher.receive()
        assert isinstance(blocked, Connection.Blocked) and blocked.reason == "low on memory"
        await publisher.publish(b"second", "q")  # waits in the socket: the broker does not read it

        await consumer.send(1, Basic.Consume(queue="q", consumer_tag="c"))
        assert isinstance(await consumer.receive(), Basic.ConsumeOk)
        assert await delivered(consumer) == b"before"
        with trio.move_on_after(0.3) as idle:
            await consumer.receive()  # "first" would come now, had the broker taken it
        assert idle.cancelled_caught

        node.alarms.memory_sampled(0, 1)
        assert isinstance(await publisher.receive(), Connection.Unblocked)
        assert [await delivered(consumer), await delivered(consumer)] == [b"first", b"second"]
        nursery.cancel_scope.cancel()


async def delivered(consumer: TrioClient) -> bytes:
    """The body of the next delivery, acknowledged."""
    deliver = await consumer.receive()
    assert isinstance(deliver, Basic.Deliver), deliver
    await consumer.receive()  # header
    body = (await consumer.receive()).value
    await consumer.send(1, Basic.Ack(delivery_tag=deliver.delivery_tag))
    return body


async def test_a_blocked_publisher_owes_no_heartbeats_until_unblocked(mock_clock: MockClock) -> None:
    mock_clock.autojump_threshold = 0.05
    node = Node(Config())
    async with trio.open_nursery() as nursery:
        port = await serve(nursery, node)
        client = await connect(port, heartbeat=1)
        node.alarms.memory_sampled(2, 1)
        await client.publish(b"x", "q")
        assert isinstance(await client.receive(), Connection.Blocked)
        # Silent for far longer than two heartbeat intervals: still connected, the broker still beats.
        received = []
        with trio.move_on_after(10):
            while (value := await client.receive()) is not None:
                received.append(value)
        assert received and all(isinstance(value, Heartbeat) for value in received)

        node.alarms.memory_sampled(0, 1)
        assert isinstance(await client.receive_method(), Connection.Unblocked)
        unblocked_at = trio.current_time()
        # Read again, and heartbeats are expected again: a client that stays silent is dropped.
        with trio.fail_after(10):
            while await client.receive() is not None:
                pass
        assert 2 <= trio.current_time() - unblocked_at < 4
        nursery.cancel_scope.cancel()


async def test_the_monitor_task_samples_before_serving_and_then_every_second(
    autojump_clock: MockClock,
) -> None:
    node = Node(Config())
    sampler = FakeSampler(memory=2000)
    monitor = ResourceMonitor(node.alarms, sampler, memory_limit=1000, disk_free_limit=500)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_resource_monitor, node, monitor)
        assert node.alarms.active == {MEMORY}
        sampler.memory = 10
        await trio.sleep(MEMORY_CHECK_INTERVAL * 0.9)
        assert node.alarms.active == {MEMORY}
        await trio.sleep(MEMORY_CHECK_INTERVAL * 0.2)
        assert node.alarms.active == frozenset()
        nursery.cancel_scope.cancel()


async def test_the_monitor_task_gives_freed_memory_back_every_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The real clock: the release runs in a worker thread, which a MockClock would jump past.
    monkeypatch.setattr(memory_release, "INTERVAL", 0.05)
    node = Node(Config())
    sampler = FakeSampler(memory=10)
    monitor = ResourceMonitor(node.alarms, sampler, memory_limit=1000, disk_free_limit=500)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_resource_monitor, node, monitor)
        with trio.fail_after(5):
            while sampler.calls.count("release") < 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_burst_of_closes_brings_the_release_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_release, "INTERVAL", 3600.0)
    monkeypatch.setattr(memory_release, "BURST_GAP", 0.05)
    node = Node(Config())
    sampler = FakeSampler(memory=10)
    monitor = ResourceMonitor(node.alarms, sampler, memory_limit=1000, disk_free_limit=500)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_resource_monitor, node, monitor)
        await trio.sleep(0.2)
        assert "release" not in sampler.calls
        for _ in range(memory_release.BURST):
            node.memory_release.note_closed()
        with trio.fail_after(5):  # at the next poll, at most MEMORY_CHECK_INTERVAL later
            while node.memory_release.closed:  # reset once the release (in its thread) is done
                await trio.sleep(0.01)
        assert sampler.calls.count("release") == 1
        nursery.cancel_scope.cancel()


def test_the_system_sampler_reads_this_process_and_this_disk(tmp_path: Path) -> None:
    total = total_memory()
    assert total is not None
    sampler = SystemSampler(tmp_path)
    assert 1 << 20 < sampler.memory_used() < total
    assert sampler.disk_free() > 0


def test_a_watermark_below_the_broker_s_size_sets_the_alarm_at_once(tmp_path: Path) -> None:
    config = replace(Config(), data_dir=str(tmp_path), resources=Resources(memory_high_watermark="1MB"))
    node = Node(config)
    build_monitor(node).poll(0.0)
    assert node.alarms.active == {MEMORY}
