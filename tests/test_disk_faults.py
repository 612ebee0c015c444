"""Disk faults end to end: a node with its store, a client speaking real frames, the group-commit task,
and writes or fsyncs that fail underneath. Publishes the store could not write are nacked, never acked;
what was confirmed before survives a restart; the disk alarm blocks publishers until the store writes
again; and recovered messages carry RabbitMQ's redelivered flag after a crash and after a clean stop."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from pamqp.commands import Basic, Confirm, Queue
from trio.testing import MockClock

from leveret.broker.node import Node
from leveret.broker.server.main import open_node
from leveret.broker.server.persistence import RETRY_DELAY, commit_pending
from leveret.broker.session.connection import ConnectionSession
from leveret.broker.store import clean_shutdown
from leveret.config import Config, Resources
from tests.peers import ClientPeer, methods

PERSISTENT = Basic.Properties(delivery_mode=2)
QUEUE = "durable"
Fault = Callable[[pytest.MonkeyPatch], None]


def disk_full(*args: object) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


def torn_pwrite(real: Callable[[int, Any, int], int]) -> Callable[[int, Any, int], int]:
    """Writes half of what it is given, then fails: a disk filling up in the middle of a record."""

    def pwrite(fd: int, data: Any, offset: int) -> int:
        real(fd, bytes(data[: len(data) // 2]), offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    return pwrite


FAULTS: dict[str, Fault] = {
    "pwrite": lambda patch: patch.setattr(os, "pwrite", disk_full),
    "torn pwrite": lambda patch: patch.setattr(os, "pwrite", torn_pwrite(os.pwrite)),
    "fsync": lambda patch: patch.setattr(os, "fsync", disk_full),
}


def start(data_dir: Path) -> Node:
    """A node on `data_dir`, its durable state recovered: what the broker does at start."""
    return open_node(replace(Config(), data_dir=str(data_dir)))


def connect(node: Node, *, confirms: bool = True, arguments: dict[str, Any] | None = None) -> ClientPeer:
    client = ClientPeer(ConnectionSession(node, "127.0.0.1:1", from_loopback=True))
    client.handshake(capabilities={"connection.blocked": True})
    client.open_channel()
    reply = methods(client.method(1, Queue.Declare(queue=QUEUE, durable=True, arguments=arguments)))
    assert isinstance(reply[-1], Queue.DeclareOk), reply
    if confirms:
        client.method(1, Confirm.Select())
    return client


async def commit(node: Node) -> None:
    """Run the group commit until it is done, or until it backs off after a failure."""
    assert node.persistence is not None
    with trio.move_on_after(RETRY_DELAY / 2):
        await commit_pending(node, node.persistence)


def publish(client: ClientPeer, bodies: range) -> list[Any]:
    frames = []
    for i in bodies:
        frames += client.publish(1, str(i).encode(), routing_key=QUEUE, properties=PERSISTENT)
    return methods(frames)


class Confirms:
    """The publisher's view of confirms: ("ack" | "nack", tag) per publish. Leveret confirms in publish
    order, so a multiple ack covers the tags after the last one confirmed."""

    def __init__(self) -> None:
        self.last = 0

    def take(self, frames: list[Any]) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        for method in frames:
            if isinstance(method, Basic.Ack):
                first = self.last + 1 if method.multiple else method.delivery_tag
                found += [("ack", tag) for tag in range(first, method.delivery_tag + 1)]
            elif isinstance(method, Basic.Nack):
                found.append(("nack", method.delivery_tag))
            else:
                continue
            self.last = method.delivery_tag
        return found


def names(frames: list[Any]) -> list[str]:
    return [method.name for method in frames if method.name.startswith("Connection.")]


def drain(node: Node, arguments: dict[str, Any] | None = None) -> list[tuple[int, bool]]:
    """(body, redelivered) of every message in the queue, in order, taken with basic.get."""
    client = connect(node, confirms=False, arguments=arguments)
    got = []
    while True:
        frames = client.method(1, Basic.Get(queue=QUEUE, no_ack=True))
        reply = methods(frames)[0]
        if isinstance(reply, Basic.GetEmpty):
            return got
        got.append((int(frames[-1][1].value), reply.redelivered))


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_disk_fault_nacks_its_publishes_and_loses_nothing_confirmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: MockClock, fault: str
) -> None:
    node = start(tmp_path)
    client = connect(node)
    confirms = Confirms()
    publish(client, range(1, 6))
    await commit(node)
    assert confirms.take(methods(client.read())) == [("ack", tag) for tag in range(1, 6)]

    with monkeypatch.context() as patch:
        FAULTS[fault](patch)
        publish(client, range(6, 9))
        await commit(node)
        assert confirms.take(methods(client.read())) == [("nack", tag) for tag in range(6, 9)]
        assert node.alarms.active == {"disk"}
        # The disk alarm blocks the connection at its next publish, which waits for the alarm to clear.
        assert names(publish(client, range(9, 10))) == ["Connection.Blocked"]
        await commit(node)
        assert confirms.take(methods(client.read())) == []

    # The disk works again: the retried writes succeed, the alarm clears and confirms are acks again.
    await commit(node)
    assert names(methods(client.read())) == ["Connection.Unblocked"]
    assert node.alarms.active == frozenset()
    client.server.resume_input()  # as the server's reader does when unblocked
    publish(client, range(10, 13))
    await commit(node)
    assert confirms.take(methods(client.read())) == [("ack", tag) for tag in range(9, 13)]

    # A crash now (no clean stop): everything acked is back, in order, and nothing nacked: the retried
    # writes stored the nacked publishes after all, and their settle records follow them.
    recovered = drain(start(tmp_path))
    assert [body for body, _ in recovered] == [*range(1, 6), *range(9, 13)]
    assert all(redelivered for _, redelivered in recovered)  # after a crash, as RabbitMQ flags them


@pytest.mark.parametrize("lifecycle", [{}, {"x-max-length": 100}, {"x-max-priority": 5}])
async def test_a_nacked_publish_is_neither_kept_nor_stored_once_the_disk_works_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: MockClock, lifecycle: dict[str, Any]
) -> None:
    # The publisher retries what was nacked: had the broker kept the first copy, it would hold two.
    node = start(tmp_path)
    client = connect(node, arguments=lifecycle)
    confirms = Confirms()
    publish(client, range(1, 3))
    await commit(node)
    assert confirms.take(methods(client.read())) == [("ack", 1), ("ack", 2)]
    with monkeypatch.context() as patch:
        FAULTS["fsync"](patch)
        publish(client, range(3, 6))
        await commit(node)
        assert confirms.take(methods(client.read())) == [("nack", tag) for tag in (3, 4, 5)]
    await commit(node)  # the retried writes succeed
    client.server.resume_input()
    publish(client, range(3, 6))  # the publisher's retry
    await commit(node)
    assert confirms.take(methods(client.read())) == [("ack", tag) for tag in range(6, 9)]
    assert [body for body, _ in drain(node, lifecycle)] == [1, 2, 3, 4, 5]
    publish(client, range(6, 7))
    await commit(node)
    # Drained, then one more: nothing nacked comes back with it after a crash.
    assert [body for body, _ in drain(start(tmp_path), lifecycle)] == [6]


def pager_rounds(node: Node) -> None:
    """Page out and read back as the pager task would, until it has nothing to do."""
    assert node.pager is not None
    while (work := node.pager.begin()) is not None:
        work.run()
        node.pager.complete(work)


async def test_a_nacked_publish_already_paged_out_is_not_kept_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: MockClock
) -> None:
    resources = replace(Resources(), message_memory_budget=str(64 * 1024))
    node = open_node(replace(Config(), data_dir=str(tmp_path), resources=resources))
    client = connect(node)
    confirms = Confirms()
    body = b"." * 1000
    for _ in range(2):
        client.publish(1, b"acked" + body, routing_key=QUEUE, properties=PERSISTENT)
    await commit(node)
    assert confirms.take(methods(client.read())) == [("ack", 1), ("ack", 2)]
    queue = node.vhosts["/"].queues[QUEUE]
    with monkeypatch.context() as patch:
        FAULTS["fsync"](patch)
        for _ in range(200):  # past the budget: most of them are paged out before the commit fails
            client.publish(1, b"nacked" + body, routing_key=QUEUE, properties=PERSISTENT)
        pager_rounds(node)
        assert queue.paged is not None and queue.paged.chunks
        await commit(node)
        assert confirms.take(methods(client.read())) == [("nack", tag) for tag in range(3, 203)]
    assert queue.message_count == 2
    await commit(node)  # the retried writes succeed, and the settle records behind them
    pager_rounds(node)
    assert queue.message_count == 2
    got = []
    reader = connect(node, confirms=False)
    while True:
        frames = reader.method(1, Basic.Get(queue=QUEUE, no_ack=False))
        if isinstance(methods(frames)[0], Basic.GetEmpty):
            break
        got.append(bytes(frames[-1][1].value)[:6])
        pager_rounds(node)
    assert got == [b"acked.", b"acked."]
    # A crash now: the two acked ones are unacked, so they come back; none of the nacked ones does.
    restarted = start(tmp_path)
    assert restarted.vhosts["/"].queues[QUEUE].message_count == 2


async def test_a_nacked_publish_delivered_before_its_nack_is_not_requeued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: MockClock
) -> None:
    node = start(tmp_path)
    publisher = connect(node)
    consumer = connect(node, confirms=False)
    consumer.method(1, Basic.Consume(queue=QUEUE, consumer_tag="c"))
    with monkeypatch.context() as patch:
        FAULTS["pwrite"](patch)
        publish(publisher, range(1, 3))  # delivered at once, before the store has written them
        await commit(node)
    assert len(consumer.read()) >= 2
    await commit(node)
    consumer.method(1, Basic.Cancel(consumer_tag="c"))
    consumer.method(1, Basic.Recover(requeue=True))  # gives the unacked deliveries back
    assert drain(node) == []
    assert drain(start(tmp_path)) == []


async def test_a_failure_that_persists_keeps_nacking_and_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: MockClock
) -> None:
    node = start(tmp_path)
    client = connect(node)
    confirms = Confirms()
    monkeypatch.setattr(os, "fsync", disk_full)
    publish(client, range(1, 3))
    with trio.move_on_after(5 * RETRY_DELAY):
        assert node.persistence is not None
        await commit_pending(node, node.persistence)  # retries once per RETRY_DELAY, failing each time
    assert confirms.take(methods(client.read())) == [("nack", 1), ("nack", 2)]
    assert node.alarms.active == {"disk"}


async def test_recovered_messages_are_redelivered_after_a_crash_but_not_after_a_clean_stop(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(1, 4))
    await commit(node)
    client.read()
    # One delivery, left unacknowledged when the broker stops.
    assert isinstance(methods(client.method(1, Basic.Get(queue=QUEUE)))[0], Basic.GetOk)
    await commit(node)
    assert node.persistence is not None
    node.persistence.close()
    assert (tmp_path / clean_shutdown.MARKER).exists()

    after_clean_stop = start(tmp_path)
    assert not (tmp_path / clean_shutdown.MARKER).exists()  # taken: a crash from now on is one
    assert drain_keeping(after_clean_stop) == [(1, True), (2, False), (3, False)]
    assert drain(start(tmp_path)) == [(1, True), (2, True), (3, True)]  # that node "crashed"


def drain_keeping(node: Node) -> list[tuple[int, bool]]:
    """Like drain, but requeues everything again, so the store still holds it all."""
    client = connect(node, confirms=False)
    got = []
    while True:
        frames = client.method(1, Basic.Get(queue=QUEUE, no_ack=False))
        reply = methods(frames)[0]
        if isinstance(reply, Basic.GetEmpty):
            break
        got.append((int(frames[-1][1].value), reply.redelivered))
    client.method(1, Basic.Recover(requeue=True))
    return got
