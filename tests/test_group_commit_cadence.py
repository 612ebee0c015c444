"""When the group-commit task commits: at once for what someone waits for (a publish's confirm), a moment
later for acks alone, which rather share the next publish's fsync (broker/server/persistence.py).

The node runs its real group-commit task (and commit thread) on trio's MockClock, whose time stands still
unless a test moves it: an ack's commit cannot come early by chance."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import trio
import trio.testing
from pamqp.commands import Basic, Confirm, Queue
from trio.testing import MockClock

from leveret.broker.node import Node
from leveret.broker.persistence import Commit
from leveret.broker.server.main import open_node
from leveret.broker.server.persistence import SETTLE_DELAY, run_group_commit
from leveret.broker.session.connection import ConnectionSession
from leveret.config import Config
from tests.peers import ClientPeer, methods

PERSISTENT = Basic.Properties(delivery_mode=2)
QUEUE = "durable"
WAIT = 10.0  # real seconds a test waits for the commit thread before it fails


def client_of(node: Node) -> ClientPeer:
    client = ClientPeer(ConnectionSession(node, "127.0.0.1:1", from_loopback=True))
    client.handshake()
    client.open_channel()
    assert isinstance(
        methods(client.method(1, Queue.Declare(queue=QUEUE, durable=True)))[-1], Queue.DeclareOk
    )
    client.method(1, Confirm.Select())
    return client


def counting_commits(node: Node) -> list[Commit]:
    """Every commit the node's persistence begins, as it begins it."""
    persistence = node.persistence
    assert persistence is not None
    begun: list[Commit] = []
    begin = persistence.begin

    def counted() -> Commit | None:
        commit = begin()
        if commit is not None:
            begun.append(commit)
        return commit

    persistence.begin = counted  # type: ignore[method-assign]
    return begun


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop and the commit thread run (the mock clock standing still) until `condition` holds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await trio.sleep(0)
        time.sleep(0.001)  # real time for the commit thread


async def test_acks_wait_for_the_next_publish_and_confirms_never_wait(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    node = open_node(replace(Config(), data_dir=str(tmp_path)))
    commits = counting_commits(node)
    publisher = client_of(node)
    consumer = client_of(node)
    consumer.method(1, Basic.Consume(queue=QUEUE, consumer_tag="c"))
    async with trio.open_nursery() as nursery:
        await nursery.start(run_group_commit, node, node.persistence)
        await until(lambda: not node.persistence or not node.persistence.urgent)
        before = len(commits)

        # A publish is committed and confirmed at once, though the clock does not move.
        publisher.publish(1, b"one", routing_key=QUEUE, properties=PERSISTENT)
        await until(lambda: any(isinstance(m, Basic.Ack) for m in methods(publisher.read())))
        assert len(commits) == before + 1
        delivery = next(m for m in methods(consumer.read()) if isinstance(m, Basic.Deliver))

        # Its ack alone is held back: no commit while the clock stands still...
        consumer.method(1, Basic.Ack(delivery_tag=delivery.delivery_tag or 0))
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            await trio.sleep(0)
        assert len(commits) == before + 1
        # ...and the next publish takes it along in its own commit, confirmed at once.
        publisher.publish(1, b"two", routing_key=QUEUE, properties=PERSISTENT)
        await until(lambda: any(isinstance(m, Basic.Ack) for m in methods(publisher.read())))
        assert len(commits) == before + 2
        assert commits[-1].batch is not None and len(commits[-1].batch.new_positions) >= 2

        # With no publish to follow, an ack is committed once SETTLE_DELAY has passed.
        delivery = next(m for m in methods(consumer.read()) if isinstance(m, Basic.Deliver))
        consumer.method(1, Basic.Ack(delivery_tag=delivery.delivery_tag or 0))
        await trio.testing.wait_all_tasks_blocked()  # the task waits out its delay
        assert len(commits) == before + 2
        mock_clock.jump(SETTLE_DELAY)
        await until(lambda: len(commits) == before + 3)
        await until(
            lambda: (
                node.persistence is not None
                and node.persistence.durable_position == node.persistence.store.append_position
            )
        )
        nursery.cancel_scope.cancel()
