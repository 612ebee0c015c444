"""The server's timer tasks on trio's MockClock: queue deadlines and the acknowledgement-timeout tick."""

from __future__ import annotations

import trio
from pamqp.commands import Basic, Channel
from trio.testing import MockClock

from leveret.broker.node import Node
from leveret.broker.server.timers import run_timers
from leveret.config import Config
from leveret.config.schema import Limits
from tests.lifecycle_support import declare_queue
from tests.peers import methods
from tests.test_session import connect


async def test_messages_expire_on_time(autojump_clock: MockClock) -> None:
    node = Node(Config(), clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_timers, node)
        client = connect(node)
        declare_queue(client, "q", **{"x-message-ttl": 1000})
        client.publish(1, b"x", routing_key="q")
        queue = node.vhosts["/"].queues["q"]
        await trio.sleep(0.99)
        assert queue.message_count == 1
        await trio.sleep(0.02)
        assert queue.message_count == 0
        nursery.cancel_scope.cancel()


async def test_an_earlier_deadline_wakes_the_sleeping_timer(autojump_clock: MockClock) -> None:
    node = Node(Config(), clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_timers, node)
        client = connect(node)
        declare_queue(client, "slow", **{"x-message-ttl": 3_600_000})
        client.publish(1, b"x", routing_key="slow")
        await trio.sleep(1)  # the timer task now sleeps towards the hour
        declare_queue(client, "fast", **{"x-expires": 500})
        await trio.sleep(0.51)
        assert "fast" not in node.vhosts["/"].queues
        assert node.vhosts["/"].queues["slow"].message_count == 1
        nursery.cancel_scope.cancel()


async def test_an_overdue_consumer_loses_its_channel(autojump_clock: MockClock) -> None:
    node = Node(Config(limits=Limits(consumer_timeout=2000)), clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_timers, node)
        client = connect(node)
        declare_queue(client, "q")
        client.method(1, Basic.Consume(queue="q", consumer_tag="c"))
        client.publish(1, b"x", routing_key="q")
        await trio.sleep(2)
        assert not any(isinstance(m, Channel.Close) for m in methods(client.read()))
        await trio.sleep(0.5)
        (close,) = [m for m in methods(client.read()) if isinstance(m, Channel.Close)]
        assert close.reply_code == 406
        assert node.vhosts["/"].queues["q"].message_count == 1
        nursery.cancel_scope.cancel()
