"""Issue 16 item 10: what a channel holds while open, and that nothing of it outlives its close.

The objects a channel keeps (its session, consumers, unacked deliveries) must be gone once it closes,
the connection open, and an open channel must stay small: what many channels take is what the allocators
must give back after them (see docs/ARCHITECTURE.md, "Memory after closes").
"""

from __future__ import annotations

import gc
import weakref

from pamqp.commands import Basic, Channel, Confirm, Queue

from leveret.broker.node import Node
from leveret.broker.queues.consumer import Consumer
from leveret.broker.session.connection import ConnectionSession
from leveret.config import Config
from tests.peers import ClientPeer

CHANNELS = 200


def _connected() -> ClientPeer:
    peer = ClientPeer(ConnectionSession(Node(Config()), "peer", from_loopback=True))
    peer.handshake()
    peer.open_channel(1)
    peer.method(1, Queue.Declare(queue="q"))
    return peer


def _live_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def _count(kind: type) -> int:
    return sum(type(item) is kind for item in gc.get_objects())


def test_an_idle_channel_holds_few_objects() -> None:
    peer = _connected()
    peer.open_channel(2)
    before = _live_objects()
    for number in range(3, CHANNELS + 3):
        peer.open_channel(number)
    per_channel = (_live_objects() - before) / CHANNELS
    # A table of bound method handlers per channel alone made 24 objects of it.
    assert per_channel <= 12, per_channel


def test_closed_channels_leave_nothing_behind() -> None:
    peer = _connected()
    session = peer.server
    peer.open_channel(2)  # a channel of each kind once first: caches warmed
    peer.method(2, Confirm.Select())
    before = _live_objects()
    numbers = range(3, CHANNELS + 3)
    for number in numbers:
        peer.open_channel(number)
        if number % 2:
            peer.method(number, Confirm.Select())
        peer.method(number, Basic.Qos(prefetch_count=2))
        peer.method(number, Basic.Consume(queue="q", consumer_tag=f"c{number}"))
    replies = [reply for n in range(2 * CHANNELS) for reply in peer.publish(1, b"%d" % n, routing_key="q")]
    deliveries = [value for _, value in replies if isinstance(value, Basic.Deliver)]
    assert len(deliveries) == 2 * CHANNELS  # every channel holds two unacked
    channels = [weakref.ref(session.channels[number]) for number in numbers]
    assert _count(Consumer) == CHANNELS
    close = Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0)
    replies = [reply for n in numbers for reply in peer.method(n, close)]
    assert sum(isinstance(value, Channel.CloseOk) for _, value in replies) == CHANNELS
    del deliveries, replies
    peer.received.clear()
    gc.collect()
    assert [ref for ref in channels if ref() is not None] == []
    assert _count(Consumer) == 0
    # The messages went back to the queue, which keeps them: about 3 objects each.
    assert _live_objects() - before <= 4 * 2 * CHANNELS + 50
