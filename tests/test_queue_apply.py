"""A queue as a state machine: `apply(command, now)` runs a command given as data and returns its reply
and its effects as data, carrying none of them out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pamqp.commands import Basic

from leveret.amqp.properties import encode_properties
from leveret.broker.message import Message
from leveret.broker.queues import commands
from leveret.broker.queues.effects import (
    ARM,
    DELIVER,
    FOOTPRINT,
    HEAD_READY,
    JOURNAL,
    LOAD,
    PAGE_OUT,
    RELEASE,
)
from leveret.broker.queues.journal import PURGED, Journal
from leveret.broker.queues.paging import HEAD_LOADING, NEVER, OVERHEAD, Pager
from leveret.broker.queues.queue import Queue
from leveret.broker.queues.subscriber import CreditPool
from leveret.broker.vhost import VirtualHost


@dataclass(eq=False)
class Consumer:
    """A consumer as a queue knows it: plain data (what the channel's Consumer also carries)."""

    tag: str
    no_ack: bool = False
    exclusive: bool = False
    priority: int = 0
    credit: int = 0
    pool: CreditPool | None = None
    output: CreditPool = field(default_factory=lambda: CreditPool(1 << 62))  # no output bound
    channel: Any = field(default=None, repr=False)  # never used under apply: no effect is carried out


def message(body: bytes) -> Message:
    return Message("", "q", b"\x00\x00", body)


def test_deliveries_are_effects_and_credit_is_a_command() -> None:
    queue = Queue("q", "/")
    consumer = Consumer("c")
    assert queue.apply((commands.ATTACH, consumer), 0.0) == (None, [])
    assert queue.apply((commands.ENQUEUE, message(b"1")), 0.0) == (0, [])  # no credit yet: it waits
    assert queue.message_count == 1
    reply, effects = queue.apply((commands.CREDIT, consumer, 2), 0.0)
    assert [(kind, who, entry.message.body) for kind, who, entry in effects] == [(DELIVER, consumer, b"1")]
    _, effects = queue.apply((commands.ENQUEUE, message(b"2")), 0.0)
    assert [(kind, entry.seq) for kind, _, entry in effects] == [(DELIVER, 2)]
    assert consumer.credit == 0 and sorted(queue.checked_out) == [1, 2]
    assert queue.apply((commands.ENQUEUE, message(b"3")), 0.0) == (0, [])


def test_settle_and_return_go_by_seq() -> None:
    queue = Queue("q", "/")
    consumer = Consumer("c", credit=1)
    queue.apply((commands.ATTACH, consumer), 0.0)
    for body in (b"1", b"2"):
        queue.apply((commands.ENQUEUE, message(body)), 0.0)
    assert sorted(queue.checked_out) == [1] and queue.message_count == 1
    reply, effects = queue.apply((commands.RETURN, [1]), 0.0)
    assert effects == [] and queue.message_count == 2  # back at the head, and no credit to deliver it
    deliveries = [queue.apply((commands.CREDIT, consumer, 1), 0.0)[1] for _ in range(2)]
    assert [(entry.seq, entry.redelivered) for [(_, _, entry)] in deliveries] == [(1, True), (2, False)]
    settled, effects = queue.apply((commands.SETTLE, [1, 2]), 0.0)
    assert [entry.seq for entry in settled] == [1, 2] and queue.unacked == 0 and effects == []


def test_a_shared_credit_pool_caps_the_deliveries() -> None:
    queue = Queue("q", "/")
    pool = CreditPool(1)
    first, second = Consumer("a", credit=5, pool=pool), Consumer("b", credit=5, pool=pool)
    queue.apply((commands.ATTACH, first), 0.0)
    queue.apply((commands.ATTACH, second), 0.0)
    delivered = [queue.apply((commands.ENQUEUE, message(b"x")), 0.0)[1] for _ in range(3)]
    assert [len(effects) for effects in delivered] == [1, 0, 0] and pool.left == 0


def test_paging_is_effects_the_pager_carries_out() -> None:
    """PAGE_OUT asks the pager to write a chunk, LOAD to read one back (LOADED when it is), RELEASE to
    let its copy go; the queue's order holds across all of it."""
    queue = Queue("q", "/")
    queue.pager = Pager(limit=64 * 1024)  # chunks of 16 KiB
    for n in range(100):
        queue.apply((commands.ENQUEUE, Message("", "q", b"\x00\x00", b"%04d" % n + bytes(1020))), 0.0)
    done, effects = queue.apply((commands.PAGE, 60 * 1024), 0.0)
    chunks = [chunk for kind, chunk in effects if kind == PAGE_OUT]
    assert done > 0 and chunks and [kind for kind, _ in effects] == [PAGE_OUT] * len(chunks)
    assert queue.message_count == 100
    written = {id(chunk): chunk.entries for chunk in chunks}
    for chunk in chunks:  # as the pager does once they are on disk
        chunk.entries = None
    consumer = Consumer("c", credit=1000)
    _, effects = queue.apply((commands.ATTACH, consumer), 0.0)
    bodies = [entry.message.body[:4] for kind, _, entry in (e for e in effects if e[0] == DELIVER)]
    loads = [effect[1] for effect in effects if effect[0] == LOAD]
    assert loads and loads[0] is chunks[0]  # read ahead of the consumer
    while loads:
        chunk = loads.pop(0)
        chunk.entries = written[id(chunk)]
        _, effects = queue.apply((commands.LOADED, chunk), 0.0)
        assert (RELEASE, chunk) in effects
        bodies += [effect[2].message.body[:4] for effect in effects if effect[0] == DELIVER]
        loads += [effect[1] for effect in effects if effect[0] == LOAD and effect[1] not in loads]
    assert bodies == [b"%04d" % n for n in range(100)] and queue.message_count == 0


def test_a_lifecycle_made_under_apply_runs_at_the_commands_now_and_after() -> None:
    vhost = VirtualHost("/", clock=lambda: 100.0)
    queue = vhost.declare_queue(
        "q", owner=None, durable=False, exclusive=False, auto_delete=False, arguments={}
    )
    assert queue.lifecycle is None
    expiring = Message("", "q", encode_properties(Basic.Properties(expiration="1000")), b"x")
    _, effects = queue.apply((commands.ENQUEUE, expiring), 5.0)  # the first message with an expiration
    assert queue.lifecycle is not None
    assert effects == [(ARM, 6.0)]  # its deadline by the command's clock, not the vhost's
    queue.enqueue(message(b"y"))  # and outside apply, by the vhost's clock again
    assert queue.message_count == 2 and queue.clock() == 100.0


def test_a_queue_reports_its_footprint_passing_the_pagers_mark_once_until_it_sets_another() -> None:
    """The memory budget is the pager's: a queue only counts its own ready messages in memory (`memory`)
    and says, once, when the count passed the mark the pager gave it."""
    queue = Queue("q", "/")
    body = bytes(1000)
    size = len(body) + 2 + OVERHEAD  # body, raw properties (b"\x00\x00"), and the per-message overhead
    queue.memory.mark = 3 * size
    effects = [queue.apply((commands.ENQUEUE, message(body)), 0.0)[1] for _ in range(6)]
    assert queue.memory.used == 6 * size
    assert effects == [[], [], [], [(FOOTPRINT,)], [], []] and queue.memory.mark == NEVER
    queue.memory.mark = queue.memory.used + size  # what the pager does once it has looked
    consumer = Consumer("c", credit=6)
    _, effects = queue.apply((commands.ATTACH, consumer), 0.0)
    assert [e[0] for e in effects] == [DELIVER] * 6 and queue.memory.used == 0  # deliveries leave it


class Getter:
    def __init__(self) -> None:
        self.told = 0

    def head_ready(self, queue: Any) -> None:
        self.told += 1


def test_basic_get_on_a_head_on_disk_is_a_load_and_a_wait_then_a_head_ready() -> None:
    queue = Queue("q", "/")
    queue.pager = Pager(limit=64 * 1024)  # chunks of 16 KiB
    for n in range(100):
        queue.apply((commands.ENQUEUE, Message("", "q", b"\x00\x00", b"%04d" % n + bytes(1020))), 0.0)
    _, effects = queue.apply((commands.PAGE, 99 * 1024), 0.0)
    chunks = [chunk for kind, chunk in effects if kind == PAGE_OUT]
    written = {id(chunk): chunk.entries for chunk in chunks}
    for chunk in chunks:
        chunk.entries = None  # written out
    bodies, loads = [], []
    while queue.ready:
        taken, effects = queue.apply((commands.TAKE,), 0.0)
        bodies.append(taken.message.body[:4])
        loads += [effect for effect in effects if effect[0] == LOAD]
    assert loads[0] == (LOAD, chunks[0])  # read ahead as the head ran down
    chunks[0].loading = False  # say the read-ahead was lost: the get asks for the chunk itself
    getter = Getter()
    reply, effects = queue.apply((commands.TAKE, getter), 0.0)
    assert reply is HEAD_LOADING and effects == [(LOAD, chunks[0])]
    reply, effects = queue.apply((commands.TAKE, getter), 0.0)  # asked again meanwhile: no second read
    assert reply is HEAD_LOADING and effects == []
    chunks[0].entries = written[id(chunks[0])]  # as the pager does once it is read
    _, effects = queue.apply((commands.LOADED, chunks[0]), 0.0)
    assert effects[:2] == [(RELEASE, chunks[0]), (HEAD_READY, getter)]  # it joined the head: told, once
    assert [e for e in effects if e[0] == HEAD_READY] == [(HEAD_READY, getter)]
    taken, _ = queue.apply((commands.TAKE, getter), 0.0)
    assert taken.message.body[:4] == b"%04d" % len(bodies)


def test_purge_is_a_removal_for_the_reason_purged() -> None:
    queue = Queue("q", "/")
    queue.journal = Journal()  # keeps nothing, but its records come out as JOURNAL effects
    for n in range(3):
        queue.apply((commands.ENQUEUE, message(b"%d" % n)), 0.0)
    count, effects = queue.apply((commands.PURGE,), 0.0)
    assert count == 3
    assert [(e[0], e[1], [entry.seq for entry in e[2]], e[3]) for e in effects] == [
        (JOURNAL, "removed", [1, 2, 3], PURGED)
    ]
