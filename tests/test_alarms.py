"""Resource alarms without a clock or sockets: the monitor on a fake sampler, and RabbitMQ's rule for
which connections a set alarm blocks, driven through whole connections."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
from pamqp.commands import Basic, Confirm, Queue

from leveret.broker.alarms import (
    DISK,
    DISK_CHECK_MAX_INTERVAL,
    DISK_CHECK_MIN_INTERVAL,
    MEMORY,
    MEMORY_CHECK_INTERVAL,
    ResourceAlarms,
    ResourceMonitor,
    blocked_reason,
    memory_limit,
)
from leveret.broker.node import Node
from leveret.broker.server.resources import SystemSampler
from leveret.broker.session.connection import ConnectionSession
from leveret.config import Config
from tests.peers import ClientPeer, methods

BLOCKED_CAPABLE = {"connection.blocked": True}


class FakeSampler:
    def __init__(self, memory: int = 100, disk: int = 10**12) -> None:
        self.memory = memory
        self.disk = disk
        self.calls: list[str] = []

    def memory_used(self) -> int:
        self.calls.append(MEMORY)
        return self.memory

    def disk_free(self) -> int:
        self.calls.append(DISK)
        return self.disk

    def release_free_memory(self) -> None:
        self.calls.append("release")


class Recorder:
    def __init__(self) -> None:
        self.changes: list[frozenset[str]] = []

    def __call__(self, active: frozenset[str]) -> None:
        self.changes.append(active)


def monitor(
    sampler: FakeSampler, *, memory_limit: int | None = 1000, disk_limit: int = 500
) -> ResourceMonitor:
    return ResourceMonitor(
        ResourceAlarms("leveret@test", Recorder()),
        sampler,
        memory_limit=memory_limit,
        disk_free_limit=disk_limit,
    )


def changes(watch: ResourceMonitor) -> list[frozenset[str]]:
    recorder = watch.alarms.on_change
    assert isinstance(recorder, Recorder)
    return recorder.changes


# ---- the monitor ---------------------------------------------------------------------------------


def test_memory_above_the_watermark_sets_the_alarm_and_below_clears_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sampler = FakeSampler(memory=999)
    watch = monitor(sampler)
    caplog.set_level(logging.INFO, logger="leveret.broker.alarms")
    watch.poll(0.0)
    assert watch.alarms.active == frozenset()
    sampler.memory = 1001
    watch.poll(MEMORY_CHECK_INTERVAL)
    assert watch.alarms.active == {MEMORY}
    sampler.memory = 1000  # no hysteresis, as in RabbitMQ: at the limit is not above it
    watch.poll(2 * MEMORY_CHECK_INTERVAL)
    assert watch.alarms.active == frozenset()
    assert changes(watch) == [{MEMORY}, frozenset()]
    texts = [record.getMessage() for record in caplog.records]
    assert texts[0] == "vm_memory_high_watermark set. Memory used:1001 allowed:1000"
    assert texts[1].startswith("memory resource limit alarm set on node leveret@test.\n\n")
    assert "*** Publishers will be blocked until this alarm clears ***" in texts[1]
    assert texts[2:] == [
        "vm_memory_high_watermark clear. Memory used:1000 allowed:1000",
        "memory resource limit alarm cleared on node leveret@test",
    ]


class HoardingSampler(FakeSampler):
    """An allocator that keeps freed memory until asked to give it back."""

    def __init__(self, held: int, kept: int) -> None:
        super().__init__(memory=held + kept)
        self.held = held

    def release_free_memory(self) -> None:
        super().release_free_memory()
        self.memory = self.held


def test_memory_kept_by_the_allocator_is_released_before_the_alarm_is_decided() -> None:
    sampler = HoardingSampler(held=900, kept=300)  # freed memory still resident: 1200 of 1000
    watch = monitor(sampler)
    watch.poll(0.0)
    assert sampler.calls[:3] == [MEMORY, "release", MEMORY]
    assert watch.alarms.active == frozenset()
    sampler.calls.clear()
    sampler.memory = 999  # under the limit: nothing to release
    watch.poll(MEMORY_CHECK_INTERVAL)
    assert sampler.calls == [MEMORY, DISK]


def test_the_system_sampler_gives_freed_memory_back() -> None:
    sampler = SystemSampler(Path("."))
    keep = []
    freed = []
    for n in range(20_000):  # 200 MB of 10 KB blocks, each next to a small one that stays (both malloc's)
        freed.append(bytes(10_000) + bytes([n % 256]))
        keep.append(bytes(600 + n % 50))
    before = sampler.memory_used()
    freed.clear()
    sampler.release_free_memory()
    assert sampler.memory_used() < before - 150_000_000
    assert keep


def test_samples_are_taken_only_when_due() -> None:
    sampler = FakeSampler()
    watch = monitor(sampler)
    due = watch.poll(10.0)
    assert sampler.calls == [MEMORY, DISK]
    assert due == 10.0 + min(MEMORY_CHECK_INTERVAL, DISK_CHECK_MAX_INTERVAL)
    sampler.calls.clear()
    watch.poll(10.0 + MEMORY_CHECK_INTERVAL / 2)
    assert sampler.calls == []


def test_disk_is_sampled_more_often_near_its_limit() -> None:
    sampler = FakeSampler(disk=10**12)
    watch = monitor(sampler, memory_limit=None, disk_limit=50_000_000)
    assert watch.poll(0.0) == DISK_CHECK_MAX_INTERVAL
    sampler.disk = 50_000_001  # a fast writer fills this in no time
    assert watch.poll(DISK_CHECK_MAX_INTERVAL) == DISK_CHECK_MAX_INTERVAL + DISK_CHECK_MIN_INTERVAL
    assert sampler.calls == [DISK, DISK]  # memory is not watched at all with no limit


def test_disk_below_the_limit_sets_the_alarm(caplog: pytest.LogCaptureFixture) -> None:
    sampler = FakeSampler(disk=499)
    watch = monitor(sampler)
    caplog.set_level(logging.INFO, logger="leveret.broker.alarms")
    watch.poll(0.0)
    assert watch.alarms.active == {DISK}
    assert caplog.records[0].getMessage() == "Free disk space is insufficient. Free bytes: 499. Limit: 500"
    assert caplog.records[1].getMessage().startswith("disk resource limit alarm set on node leveret@test.")
    sampler.disk = 500
    watch.poll(5.0)
    assert watch.alarms.active == frozenset()
    assert caplog.records[2].getMessage() == "Free disk space is sufficient. Free bytes: 500. Limit: 500"


def test_a_failing_sampler_keeps_the_last_state(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeSampler):
        def disk_free(self) -> int:
            raise OSError(errno.ENOENT, "No such file or directory")

    watch = monitor(Broken(memory=2000))
    watch.poll(0.0)
    assert watch.alarms.active == {MEMORY}
    assert "cannot read the free disk space" in caplog.text


def test_a_failing_store_holds_the_disk_alarm_until_a_commit_succeeds() -> None:
    recorder = Recorder()
    alarms = ResourceAlarms("leveret@test", recorder)
    alarms.commit_finished(OSError(errno.ENOSPC, "No space left on device"))
    assert alarms.active == {DISK}
    alarms.disk_sampled(1, 2)  # low space too: still one disk alarm
    alarms.commit_finished(None)
    assert alarms.active == {DISK}
    alarms.disk_sampled(3, 2)
    assert alarms.active == frozenset()
    assert recorder.changes == [{DISK}, frozenset()]


def test_memory_limit_is_a_fraction_of_total_memory_or_a_size() -> None:
    assert memory_limit(0.6, 10_000) == 6000
    assert memory_limit("2GB", 10_000) == 2_000_000_000
    assert memory_limit("1GiB", 10_000) == 2**30


def test_reason_texts_are_rabbitmqs() -> None:
    assert blocked_reason(frozenset({MEMORY})) == "low on memory"
    assert blocked_reason(frozenset({DISK})) == "low on disk"
    assert blocked_reason(frozenset({DISK, MEMORY})) == "low on memory & disk"


# ---- which connections are blocked --------------------------------------------------------------


@pytest.fixture
def node() -> Node:
    return Node(Config())


def connect(node: Node, capabilities: dict[str, bool] | None = None) -> tuple[ClientPeer, ConnectionSession]:
    session = ConnectionSession(node, "127.0.0.1:1", from_loopback=True)
    client = ClientPeer(session)
    client.handshake(capabilities=capabilities or BLOCKED_CAPABLE)
    client.open_channel()
    return client, session


def said(frames: list) -> list[tuple[str, str | None]]:
    """Each method's name and, for connection.blocked, its reason."""
    return [(method.name, getattr(method, "reason", None)) for method in methods(frames)]


BLOCKED_MEMORY = [("Connection.Blocked", "low on memory")]


def set_memory_alarm(node: Node, on: bool) -> None:
    node.alarms.memory_sampled(2 if on else 0, 1)


def queue_depth(client: ClientPeer, name: str) -> int:
    reply = methods(client.method(1, Queue.Declare(queue=name, passive=True)))[-1]
    assert isinstance(reply, Queue.DeclareOk), reply
    return reply.message_count


def test_a_publish_under_an_alarm_blocks_and_waits_with_what_follows_it(node: Node) -> None:
    client, session = connect(node)
    client.method(1, Queue.Declare(queue="q"))
    client.method(1, Confirm.Select())
    set_memory_alarm(node, True)
    assert client.read() == []  # nothing is said before the connection publishes
    assert said(client.publish(1, b"x", routing_key="q")) == BLOCKED_MEMORY
    assert said(client.publish(1, b"y", routing_key="q")) == []  # buffered, not handled
    other, _ = connect(node)
    assert queue_depth(other, "q") == 0  # as in RabbitMQ, which stops reading before the body
    set_memory_alarm(node, False)
    assert said(client.read()) == [("Connection.Unblocked", None)]
    session.resume_input()  # the server's reader does this when unblocked
    assert [(m.name, m.delivery_tag) for m in methods(client.read())] == [("Basic.Ack", 2)]
    assert queue_depth(other, "q") == 2


def test_a_publish_with_no_body_is_routed_before_blocking(node: Node) -> None:
    client, session = connect(node)
    client.method(1, Queue.Declare(queue="q"))
    set_memory_alarm(node, True)
    assert said(client.publish(1, b"", routing_key="q")) == BLOCKED_MEMORY
    assert session.throttle.blocked
    other, _ = connect(node)
    assert queue_depth(other, "q") == 1  # its header completed it: RabbitMQ routes it too


def test_connections_that_do_not_publish_keep_flowing(node: Node) -> None:
    publisher, publishing = connect(node)
    publisher.method(1, Queue.Declare(queue="q"))
    publisher.publish(1, b"before", routing_key="q")  # published before the alarm: not blocked by it
    consumer, consuming = connect(node)
    set_memory_alarm(node, True)
    assert publisher.read() == [] and not publishing.throttle.blocked
    frames = consumer.method(1, Basic.Consume(queue="q", consumer_tag="c"))
    deliver = next(value for _, value in frames if isinstance(value, Basic.Deliver))
    consumer.method(1, Basic.Ack(delivery_tag=deliver.delivery_tag))
    assert not consuming.throttle.blocked
    assert queue_depth(consumer, "q") == 0


def test_unblocked_once_every_alarm_has_cleared(node: Node) -> None:
    client, session = connect(node)
    resumed: list[bool] = []
    session.throttle.on_unblocked = lambda: resumed.append(True)
    node.alarms.disk_sampled(1, 2)
    assert said(client.publish(1, b"x", routing_key="q")) == [("Connection.Blocked", "low on disk")]
    set_memory_alarm(node, True)  # a second alarm: no second connection.blocked
    node.alarms.disk_sampled(3, 2)
    assert client.read() == [] and session.throttle.blocked
    set_memory_alarm(node, False)
    assert said(client.read()) == [("Connection.Unblocked", None)]
    assert resumed == [True] and not session.throttle.blocked
    # Blocked again only by a publish under a new alarm.
    set_memory_alarm(node, True)
    assert client.read() == []
    assert said(client.publish(1, b"y", routing_key="q")) == BLOCKED_MEMORY


def test_a_client_without_the_capability_is_blocked_without_being_told(node: Node) -> None:
    client, session = connect(node, capabilities={"consumer_cancel_notify": True})
    set_memory_alarm(node, True)
    assert client.publish(1, b"x", routing_key="q") == []
    assert session.throttle.blocked
    set_memory_alarm(node, False)
    assert client.read() == [] and not session.throttle.blocked
