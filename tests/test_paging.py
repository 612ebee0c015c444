"""Queues larger than memory: a node over its message memory budget pages out the largest backlogs and
reads them back ahead of their consumers, in order, with their flags, and reclaims the disk behind them.

The node is the broker's own (`open_node`, with its store and pager); the pager's and the group commit's
rounds run on the test's thread (`drive`), where the server would run them in a worker thread.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from pamqp.commands import Basic, Queue
from trio.testing import MockClock

from leveret.broker import persistence
from leveret.broker.node import Node
from leveret.broker.queues.paging import OVERHEAD
from leveret.broker.queues.queue import Queue as BrokerQueue
from leveret.broker.server.main import open_node
from leveret.broker.session.connection import ConnectionSession
from leveret.broker.store import segments
from leveret.config import Config, Resources
from tests.lifecycle_support import messages
from tests.peers import ClientPeer, methods

BODY = 1000
BUDGET = 64 * 1024  # about 50 messages of BODY bytes
PERSISTENT = Basic.Properties(delivery_mode=2)
TRANSIENT = Basic.Properties(delivery_mode=1)


def start(data_dir: Path, budget: int = BUDGET) -> Node:
    resources = replace(Resources(), message_memory_budget=str(budget))
    return open_node(replace(Config(), data_dir=str(data_dir), resources=resources))


def drive(node: Node) -> None:
    """Run group commits and pager rounds until neither has anything left to do; check the budget."""
    assert node.persistence is not None and node.pager is not None
    while True:
        busy = False
        commit = node.persistence.begin()
        if commit is not None:
            commit.run()
            node.commit_completed(node.persistence.complete(commit))
            busy = True
        work = node.pager.begin()
        if work is not None:
            work.run()
            node.pager.complete(work)
            busy = True
        if not busy:
            break
    assert node.pager.used == in_memory(node)  # the budget's count never drifts


def connect(node: Node, queue: str = "q", **declare: Any) -> ClientPeer:
    client = ClientPeer(ConnectionSession(node, "127.0.0.1:1", from_loopback=True))
    client.handshake()
    client.open_channel()
    reply = methods(client.method(1, Queue.Declare(queue=queue, **declare)))
    assert isinstance(reply[-1], Queue.DeclareOk), reply
    return client


def body(number: int) -> bytes:
    return b"%08d" % number + b"." * (BODY - 8)


def publish(client: ClientPeer, numbers: range, queue: str = "q", properties: Any = TRANSIENT) -> None:
    for number in numbers:
        client.publish(1, body(number), routing_key=queue, properties=properties)


def queue_of(node: Node, name: str = "q") -> BrokerQueue:
    return node.vhosts["/"].queues[name]


def in_memory(node: Node) -> int:
    """What the budget should count: the footprint of every ready message in memory (body, raw properties
    and OVERHEAD each), all queues."""
    total = 0
    for queue in node.queues():
        held = list(queue.ready) + (list(queue.paged.tail) if queue.paged is not None else [])
        total += sum(entry.message.size + OVERHEAD for entry in held)
    return total


def page_files(data_dir: Path) -> list[int]:
    return segments.list_segments(data_dir / "pages")


def consume(
    node: Node, client: ClientPeer, count: int, queue: str = "q", prefetch: int = 10
) -> list[tuple[int, bool]]:
    """(number, redelivered) of `count` deliveries to a consumer acking each batch, driving the pager."""
    client.method(1, Basic.Qos(prefetch_count=prefetch))
    frames = client.method(1, Basic.Consume(queue=queue, consumer_tag="c"))
    got: list[tuple[int, bool]] = []
    idle = 0
    while True:
        found = messages(frames)
        got += [(int(payload[:8]), method.redelivered) for method, _, payload in found]
        if found:
            last = found[-1][0].delivery_tag
        if len(got) >= count:
            break
        if found:
            frames = client.method(1, Basic.Ack(delivery_tag=last, multiple=True))
            idle = 0
        else:
            idle += 1
            assert idle < 5, f"no deliveries after {len(got)} of {count}"
        drive(node)
        frames += client.read()
    # Cancelled before the last ack, so that no delivery goes past `count`.
    client.method(1, Basic.Cancel(consumer_tag="c"))
    client.method(1, Basic.Ack(delivery_tag=last, multiple=True))
    return got


def get(
    client: ClientPeer, queue: str = "q", *, no_ack: bool = False
) -> list[tuple[Any, Basic.Properties, bytes]]:
    """basic.get as a client waits for it: a get whose head is on disk is held until the pager's round
    has read it back (`drive`), then answered."""
    frames = client.method(1, Basic.Get(queue=queue, no_ack=no_ack))
    if not methods(frames):
        drive(client.server.node)
        frames += client.read()
    assert methods(frames), "basic.get was never answered"
    return messages(frames)


def get_all(client: ClientPeer, queue: str = "q") -> list[tuple[int, bool]]:
    got = []
    while True:
        found = get(client, queue, no_ack=True)
        if not found:
            return got
        got.append((int(found[0][2][:8]), found[0][0].redelivered))


def get_all_but(client: ClientPeer, count: int, queue: str = "q") -> list[tuple[int, bool]]:
    """The first `count` messages, by basic.get with no-ack."""
    got = []
    for _ in range(count):
        found = get(client, queue, no_ack=True)
        got.append((int(found[0][2][:8]), found[0][0].redelivered))
    return got


def fresh(numbers: range) -> list[tuple[int, bool]]:
    return [(number, False) for number in numbers]


# -- page-out, page-in, reclaim -------------------------------------------------------------------------


async def test_a_backlog_over_budget_pages_out_and_drains_in_order_then_frees_its_files(
    tmp_path: Path,
) -> None:
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(500))
    drive(node)
    queue = queue_of(node)
    assert node.pager is not None
    assert node.pager.used == in_memory(node) <= BUDGET
    assert queue.paged is not None and len(queue.ready) < 60 and queue.message_count == 500
    assert page_files(tmp_path)

    assert consume(node, client, 500) == fresh(range(500))
    drive(node)
    assert queue.paged is None and queue.message_count == 0
    assert node.pager.used == 0
    assert len(page_files(tmp_path)) <= 1  # the file appends go to stays; every other one is deleted


async def test_large_headers_count_against_the_budget(tmp_path: Path) -> None:
    # 40 messages of 1 KB bodies fit the budget by their bodies, not with 4 KB of headers each.
    headers = Basic.Properties(headers={"pad": "x" * 4000}, delivery_mode=1)
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(40), properties=headers)
    drive(node)
    queue = queue_of(node)
    assert node.pager is not None
    assert node.pager.used == in_memory(node) <= BUDGET
    assert queue.paged is not None and queue.message_count == 40
    assert consume(node, client, 40) == fresh(range(40))
    drive(node)
    assert node.pager.used == 0


async def test_a_chunk_holds_a_chunk_of_budget_whatever_its_bodies(tmp_path: Path) -> None:
    # Read back whole, a chunk must not bring back far more than the budget's chunk size with its headers.
    headers = Basic.Properties(headers={"pad": "x" * 4000}, delivery_mode=1)
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(200), properties=headers)
    drive(node)
    queue = queue_of(node)
    assert node.pager is not None and queue.paged is not None
    footprint = 1000 + 4000 + OVERHEAD
    assert all(chunk.count * footprint <= node.pager.chunk_size + footprint for chunk in queue.paged.chunks)


async def test_a_consumer_with_credit_left_gets_every_paged_message_without_acking(tmp_path: Path) -> None:
    # 4 KB of headers each: a few messages a chunk, and the connection's output bound (4 MiB) stops the
    # consumer now and then. A chunk read back ahead joins the head as it runs dry, in the middle of a
    # delivery round: that round must go on with it, or its messages wait for a credit change that never
    # comes (the consumer has credit left and acks nothing).
    headers = Basic.Properties(headers={"pad": "x" * 4000}, delivery_mode=1)
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(2000), properties=headers)
    drive(node)
    assert queue_of(node).paged is not None
    client.method(1, Basic.Qos(prefetch_count=5000))
    frames = client.method(1, Basic.Consume(queue="q", consumer_tag="c"))
    session = client.server
    got: list[int] = []
    for _ in range(200):
        got += [int(payload[:8]) for _, _, payload in messages(frames)]
        session.output_left(0)  # what the server's writer reports once the socket took everything
        drive(node)
        frames = client.read()
    assert got == list(range(2000))


async def test_publishes_while_paged_go_behind_the_paged_messages(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(300))
    drive(node)
    consumer = connect(node)
    got = consume(node, consumer, 100)
    publish(client, range(300, 600))  # while some are still paged out: they queue behind
    drive(node)
    got += consume(node, consumer, 500)
    assert got == fresh(range(600))
    assert node.pager is not None and node.pager.used == 0


async def test_basic_get_on_a_head_on_disk_waits_for_the_pagers_read_then_answers_in_order(
    tmp_path: Path,
) -> None:
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(200))
    drive(node)
    queue = queue_of(node)
    assert queue.paged is not None
    got = get_all_but(client, len(queue.ready))  # the head in memory: answered at once
    # The head is empty: the get is held (no read on the event loop) and the chunk asked of the pager.
    held = client.method(1, Basic.Get(queue="q", no_ack=True))
    assert methods(held) == [] and queue.message_count == 200 - len(got)
    later = client.method(1, Basic.Get(queue="q", no_ack=True))  # pipelined: waits behind the first
    assert methods(later) == []
    drive(node)  # the pager's round reads the chunk back: both gets are answered, in order
    answered = messages(client.read())
    assert len(answered) == 2 and [m.message_count for m, _, _ in answered] == [
        199 - len(got),
        198 - len(got),
    ]
    got += [(int(body[:8]), method.redelivered) for method, _, body in answered]
    got += get_all(client)
    assert got == fresh(range(200))
    assert queue.paged is None


async def test_the_largest_backlogs_page_out_first(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node, "small")
    connect(node, "large")
    publish(client, range(10), "small")
    publish(client, range(200), "large")
    drive(node)
    assert queue_of(node, "small").paged is None and len(queue_of(node, "small").ready) == 10
    assert queue_of(node, "large").paged is not None


async def test_a_queue_under_budget_never_touches_the_disk(tmp_path: Path) -> None:
    node = start(tmp_path, budget=10 * 1024 * 1024)
    client = connect(node)
    publish(client, range(500))
    drive(node)
    assert queue_of(node).paged is None
    assert page_files(tmp_path) == []


# -- flags, returns, purge, delete ----------------------------------------------------------------------


async def test_a_requeued_message_keeps_its_place_ahead_of_paged_ones(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(300))
    drive(node)
    taker = connect(node)
    tags = []
    for _ in range(3):
        method = get(taker)[0][0]
        tags.append(method.delivery_tag)
    publish(client, range(300, 400))  # pages out more, behind those taken
    drive(node)
    taker.method(1, Basic.Nack(delivery_tag=tags[1], requeue=True))
    taker.method(1, Basic.Nack(delivery_tag=tags[0], requeue=True))
    drive(node)
    got = get_all(client)
    assert got[:2] == [(0, True), (1, True)]
    assert got[2:] == fresh(range(3, 400))
    taker.method(1, Basic.Ack(delivery_tag=tags[2]))
    assert node.pager is not None and node.pager.used == 0


async def test_paged_messages_read_back_and_requeued_come_back_first(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(300))
    drive(node)
    # Deep into the paged part, then returned: back at the head, redelivered, in order.
    consumer = connect(node)
    consume_no_ack = consume(node, consumer, 200)
    assert consume_no_ack == fresh(range(200))
    taker = connect(node)
    first = get(taker)[0][0]
    second = get(taker)[0][0]
    taker.method(1, Basic.Nack(delivery_tag=second.delivery_tag, multiple=True, requeue=True))
    assert first.delivery_tag < second.delivery_tag
    assert get_all(client) == [(200, True), (201, True)] + fresh(range(202, 300))


async def test_purge_drops_paged_messages_and_their_files(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(500))
    drive(node)
    reply = methods(client.method(1, Queue.Purge(queue="q")))[0]
    assert isinstance(reply, Queue.PurgeOk) and reply.message_count == 500
    drive(node)
    assert queue_of(node).message_count == 0 and queue_of(node).paged is None
    assert node.pager is not None and node.pager.used == 0
    assert len(page_files(tmp_path)) <= 1
    publish(client, range(500, 510))
    assert get_all(client) == fresh(range(500, 510))


async def test_deleting_a_paged_queue_frees_its_memory_and_files(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(500))
    drive(node)
    reply = methods(client.method(1, Queue.Delete(queue="q")))[0]
    assert isinstance(reply, Queue.DeleteOk) and reply.message_count == 500
    drive(node)
    assert node.pager is not None and node.pager.used == 0
    assert len(page_files(tmp_path)) <= 1


async def test_delete_if_empty_sees_paged_messages(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(200))
    drive(node)
    while queue_of(node).ready:  # only paged messages left
        get(client, no_ack=True)
    frames = methods(client.method(1, Queue.Delete(queue="q", if_empty=True)))
    assert frames[0].name == "Channel.Close" and frames[0].reply_code == 406


# -- durability -----------------------------------------------------------------------------------------


async def test_persistent_messages_on_durable_queues_page_out_without_a_copy(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node, durable=True)
    publish(client, range(300), properties=PERSISTENT)
    drive(node)
    queue = queue_of(node)
    assert queue.paged is not None
    assert all(chunk.run is None and chunk.locations is not None for chunk in queue.paged.chunks)
    assert page_files(tmp_path) == []  # read back from the queue's own log
    assert consume(node, client, 300) == fresh(range(300))


async def test_a_restart_forgets_paged_transient_messages_and_recovers_paged_persistent_ones(
    tmp_path: Path,
) -> None:
    node = start(tmp_path)
    client = connect(node, durable=True)
    for number in range(400):  # every other one persistent: chunks mix the log and the page files
        client.publish(1, body(number), routing_key="q", properties=(TRANSIENT, PERSISTENT)[number % 2])
    drive(node)
    assert queue_of(node).paged is not None and page_files(tmp_path)
    assert node.persistence is not None
    node.persistence.close()  # a clean stop

    restarted = start(tmp_path)
    assert page_files(tmp_path) == []
    drive(restarted)  # the recovered backlog is over budget too: paged out again, from the log
    assert queue_of(restarted).paged is not None and page_files(tmp_path) == []
    assert get_all(connect(restarted, durable=True)) == fresh(range(1, 400, 2))


async def test_redelivered_flags_survive_paging_out_and_back(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node, durable=True)
    publish(client, range(300), properties=PERSISTENT)
    drive(node)
    # One delivery left unacknowledged at a crash: after it, every recovered message is redelivered,
    # as in RabbitMQ; paged out again (mixed flags too: the one taken before is redelivered either way).
    get(client)
    drive(node)

    crashed = start(tmp_path)
    drive(crashed)
    queue = queue_of(crashed)
    assert queue.paged is not None and queue.paged.chunks[0].redelivered is not None
    assert consume(crashed, connect(crashed, durable=True), 300) == [(n, True) for n in range(300)]


async def test_a_durable_backlog_over_budget_recovers_without_coming_into_memory(tmp_path: Path) -> None:
    node = start(tmp_path, budget=20 * BUDGET)  # the whole backlog fits before the restart
    client = connect(node, durable=True)
    publish(client, range(600), properties=PERSISTENT)
    got = get_all_but(client, 100)  # the first 100 are settled: the log holds 500 unsettled
    assert got == fresh(range(100))
    drive(node)
    assert queue_of(node).paged is None
    assert node.persistence is not None
    node.persistence.close()

    restarted = start(tmp_path)
    queue = queue_of(restarted)
    # Straight from the log into the paged state: only about a budget's worth was read into memory.
    assert queue.paged is not None and queue.message_count == 500
    assert restarted.pager is not None
    assert restarted.pager.used == in_memory(restarted) <= BUDGET + BODY + OVERHEAD
    assert all(chunk.entries is None for chunk in queue.paged.chunks)
    assert page_files(tmp_path) == []  # nothing was copied out of the log
    assert consume(restarted, connect(restarted, durable=True), 500) == fresh(range(100, 600))


async def test_recovery_counts_large_headers_as_the_budget_does(tmp_path: Path) -> None:
    headers = Basic.Properties(headers={"pad": "x" * 4000}, delivery_mode=2)
    node = start(tmp_path, budget=20 * BUDGET)
    client = connect(node, durable=True)
    publish(client, range(200), properties=headers)
    drive(node)
    assert node.persistence is not None
    node.persistence.close()

    restarted = start(tmp_path)  # no pager round yet: what recovery itself kept
    queue = queue_of(restarted)
    footprint = BODY + 4000 + OVERHEAD  # about; the raw properties are a little more than the pad
    assert restarted.pager is not None
    assert restarted.pager.used == in_memory(restarted) <= BUDGET + 2 * footprint
    assert queue.paged is not None and queue.message_count == 200
    # Chunks are sized by the same measure: one read back is about a chunk of budget.
    chunk_size = restarted.pager.chunk_size
    assert all(chunk.count * footprint <= chunk_size + footprint for chunk in queue.paged.chunks)
    assert consume(restarted, connect(restarted, durable=True), 200) == fresh(range(200))


LIFECYCLE = {"x-max-length": 10_000, "x-message-ttl": 3_600_000}


async def test_a_lifecycle_queue_backlog_over_budget_recovers_without_coming_into_memory(
    tmp_path: Path,
) -> None:
    node = start(tmp_path, budget=20 * BUDGET)  # the whole backlog fits before the restart
    client = connect(node, durable=True, arguments=LIFECYCLE)
    publish(client, range(500), properties=PERSISTENT)
    drive(node)
    assert queue_of(node).paged is None
    assert node.persistence is not None
    node.persistence.close()

    restarted = start(tmp_path)
    queue = queue_of(restarted)
    assert queue.paged is not None and queue.message_count == 500
    assert restarted.pager is not None
    assert restarted.pager.used == in_memory(restarted) <= BUDGET + BODY + OVERHEAD
    assert all(chunk.entries is None for chunk in queue.paged.chunks)
    # Each paged message keeps its deadline: about an hour from now on the queue's clock.
    expires = [when for chunk in queue.paged.chunks for when in chunk.expires or []]
    assert len(expires) == 500 - len(queue.ready)
    assert all(abs(when - (trio.current_time() + 3600)) < 60 for when in expires)
    assert consume(restarted, connect(restarted, durable=True, arguments=LIFECYCLE), 500) == fresh(range(500))


async def test_recovered_paged_messages_still_expire(tmp_path: Path, autojump_clock: MockClock) -> None:
    arguments = {"x-message-ttl": 300}
    node = start(tmp_path, budget=20 * BUDGET)
    client = connect(node, durable=True, arguments=arguments)
    publish(client, range(400), properties=PERSISTENT)
    drive(node)
    assert node.persistence is not None
    node.persistence.close()

    restarted = start(tmp_path)
    queue = queue_of(restarted)
    assert queue.paged is not None
    for _ in range(100):  # the node's timers, as its timer task would run them, and the pager's reads
        autojump_clock.jump(1)
        restarted.deadlines.fire(trio.current_time())
        drive(restarted)
        if queue.message_count == 0:
            break
    assert queue.message_count == 0 and queue.paged is None


PRIORITY = {"x-max-priority": 5}


def priority_of(number: int) -> int:
    return number * 7 % 8  # 0 to 7: above the maximum counts as 5


def publish_prioritised(client: ClientPeer, numbers: range) -> None:
    for number in numbers:
        properties = Basic.Properties(delivery_mode=2, priority=priority_of(number))
        client.publish(1, body(number), routing_key="q", properties=properties)


def by_priority(numbers: list[int]) -> list[tuple[int, bool]]:
    """The delivery order of a priority queue holding `numbers`: highest level first, FIFO within one."""
    return fresh(sorted(numbers, key=lambda n: (-min(priority_of(n), 5), n)))  # type: ignore[arg-type]


def restarted_priority_backlog(tmp_path: Path, count: int) -> Node:
    node = start(tmp_path, budget=20 * BUDGET)  # the whole backlog fits before the restart
    publish_prioritised(connect(node, durable=True, arguments=PRIORITY), range(count))
    drive(node)
    assert node.persistence is not None
    node.persistence.close()
    return start(tmp_path)


async def test_a_priority_queue_backlog_over_budget_recovers_in_bounded_memory(tmp_path: Path) -> None:
    restarted = restarted_priority_backlog(tmp_path, 600)
    queue = queue_of(restarted)
    assert queue.message_count == 600
    assert restarted.pager is not None
    # The highest levels' heads are in memory; the rest of each level stayed in the log.
    assert restarted.pager.used == in_memory(restarted) <= BUDGET + BODY + OVERHEAD
    assert len(list(queue.ready)) < 100
    assert page_files(tmp_path) == []  # nothing was copied out of the log
    client = connect(restarted, durable=True, arguments=PRIORITY)
    publish_prioritised(client, range(600, 700))  # behind each level's chunks
    got = consume(restarted, client, 700)
    assert got == by_priority(list(range(700)))
    drive(restarted)
    assert queue.message_count == 0 and restarted.pager.used == 0


async def test_a_recovered_priority_backlog_is_read_ahead_and_served_by_basic_get(tmp_path: Path) -> None:
    restarted = restarted_priority_backlog(tmp_path, 400)
    client = connect(restarted, durable=True, arguments=PRIORITY)
    got = []
    for _ in range(400):
        got += get_all_but(client, 1)
        drive(restarted)  # read-ahead rounds between gets
        assert restarted.pager is not None and restarted.pager.used <= BUDGET + 4 * restarted.pager.chunk_size
    assert got == by_priority(list(range(400)))
    assert get_all(client) == []


async def test_a_purged_recovered_priority_backlog_stays_purged_but_an_unacked_message_comes_back(
    tmp_path: Path,
) -> None:
    restarted = restarted_priority_backlog(tmp_path, 500)
    client = connect(restarted, durable=True, arguments=PRIORITY)
    found = messages(client.method(1, Basic.Get(queue="q", no_ack=False)))  # the first at the top level
    first = int(found[0][2][:8])
    assert first == by_priority(list(range(500)))[0][0]
    reply = methods(client.method(1, Queue.Purge(queue="q")))
    assert isinstance(reply[-1], Queue.PurgeOk) and reply[-1].message_count == 499
    drive(restarted)
    assert restarted.persistence is not None
    restarted.persistence.close()  # the unacked one is still the queue's

    again = start(tmp_path)
    assert queue_of(again).message_count == 1
    assert get_all(connect(again, durable=True, arguments=PRIORITY)) == [(first, True)]


QUORUM = {"x-queue-type": "quorum"}


async def test_a_quorum_queue_whose_log_counted_returns_recovers_in_bounded_memory_with_its_counts(
    tmp_path: Path,
) -> None:
    node = start(tmp_path, budget=20 * BUDGET)
    client = connect(node, durable=True, arguments=QUORUM)
    publish(client, range(400), properties=PERSISTENT)
    client.method(1, Basic.Qos(prefetch_count=0))
    client.method(1, Basic.Consume(queue="q", consumer_tag="c"))
    client.method(1, Basic.Cancel(consumer_tag="c"))
    # Every one delivered, then given back with requeue: the log counts a return for each.
    client.method(1, Basic.Nack(delivery_tag=400, multiple=True, requeue=True))
    drive(node)
    assert node.persistence is not None
    node.persistence.close()

    restarted = start(tmp_path)
    queue = queue_of(restarted)
    assert queue.paged is not None and queue.message_count == 400
    assert restarted.pager is not None
    # Each one held carries an x-delivery-count header (about 30 bytes) that its logged copy has not.
    assert restarted.pager.used == in_memory(restarted) <= BUDGET + BODY + OVERHEAD + 30 * len(queue.ready)
    assert len(queue.ready) < 60
    assert any(chunk.returns is not None for chunk in queue.paged.chunks)
    client = connect(restarted, durable=True, arguments=QUORUM)
    counts = []
    for _ in range(400):
        found = messages(client.method(1, Basic.Get(queue="q", no_ack=True)))
        method, properties, payload = found[0]
        counts.append((int(payload[:8]), method.redelivered, properties.headers["x-delivery-count"]))
        drive(restarted)
    assert counts == [(number, True, 1) for number in range(400)]


async def test_purged_paged_persistent_messages_stay_purged_after_a_restart(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node, durable=True)
    publish(client, range(300), properties=PERSISTENT)
    drive(node)
    client.method(1, Queue.Purge(queue="q"))
    drive(node)
    assert get_all(connect(start(tmp_path), durable=True)) == []


# -- queues with a lifecycle ----------------------------------------------------------------------------


async def test_drop_head_reaches_into_paged_messages(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node, arguments={"x-max-length": 150})
    publish(client, range(400))
    drive(node)
    assert queue_of(node).message_count == 150
    assert get_all(client) == fresh(range(250, 400))
    assert node.pager is not None and node.pager.used == 0


async def test_max_length_bytes_counts_paged_messages(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node, arguments={"x-max-length-bytes": 200 * BODY, "x-overflow": "reject-publish"})
    publish(client, range(300))
    drive(node)
    assert queue_of(node).paged is not None
    assert get_all(client) == fresh(range(200))


async def test_max_length_bytes_counts_bodies_alone(tmp_path: Path) -> None:
    # As in RabbitMQ: headers take budget but not x-max-length-bytes.
    headers = Basic.Properties(headers={"pad": "x" * 4000}, delivery_mode=1)
    node = start(tmp_path)
    client = connect(node, arguments={"x-max-length-bytes": 30 * BODY, "x-overflow": "reject-publish"})
    publish(client, range(40), properties=headers)
    drive(node)
    assert queue_of(node).paged is not None
    assert get_all(client) == fresh(range(30))


async def test_paged_messages_expire_when_they_reach_the_head(
    tmp_path: Path, autojump_clock: MockClock
) -> None:
    node = start(tmp_path)
    client = connect(
        node,
        arguments={"x-message-ttl": 1000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"},
    )
    connect(node, "dead")
    publish(client, range(200))
    drive(node)
    assert queue_of(node).paged is not None
    for _ in range(20):  # each deadline reads the next chunk back, then expires it
        autojump_clock.jump(2)
        node.deadlines.fire(autojump_clock.current_time())
        drive(node)
    assert queue_of(node).message_count == 0
    assert get_all(client, "dead") == fresh(range(200))


class _LaterWallClock:
    """Stands in for the `time` module of broker/persistence.py: a wall clock `ahead` seconds ahead."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def time(self) -> float:
        return time.time() + self.ahead


async def test_a_durable_ttl_backlog_pages_through_its_log_and_expires_after_a_restart_past_its_ttl(
    tmp_path: Path, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    arguments = {"x-message-ttl": 60_000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}
    node = start(tmp_path)
    client = connect(node, durable=True, arguments=arguments)
    connect(node, "dead", durable=True)
    publish(client, range(300), properties=PERSISTENT)
    drive(node)
    queue = queue_of(node)
    assert queue.paged is not None and all(chunk.locations is not None for chunk in queue.paged.chunks)
    assert page_files(tmp_path) == []  # the chunks are the log's records, deadline and all
    assert get_all_but(client, 100) == fresh(range(100))  # read back from the log
    drive(node)
    assert node.persistence is not None
    node.persistence.close()

    monkeypatch.setattr(persistence, "time", _LaterWallClock(120))  # down for two minutes
    restarted = start(tmp_path)
    drive(restarted)  # left in the log as chunks, deadlines and all
    assert queue_of(restarted).paged is not None
    for _ in range(20):  # each deadline reads the next chunk back, then expires it
        restarted.deadlines.fire(autojump_clock.current_time())
        drive(restarted)
    assert queue_of(restarted).message_count == 0
    assert get_all(connect(restarted, "dead", durable=True), "dead") == fresh(range(100, 300))


async def test_a_paged_plain_queue_that_takes_on_a_lifecycle_keeps_its_paged_messages(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(300))
    drive(node)
    client.publish(1, body(300), routing_key="q", properties=Basic.Properties(expiration="600000"))
    drive(node)
    assert get_all(client) == fresh(range(301))


async def test_a_priority_queue_keeps_its_messages_in_memory(tmp_path: Path) -> None:
    node = start(tmp_path)
    client = connect(node, arguments={"x-max-priority": 5})
    publish(client, range(200))
    drive(node)
    assert queue_of(node).paged is None
    assert get_all(client) == fresh(range(200))


@pytest.mark.parametrize("budget", ["1GB", "0.25"])
def test_the_budget_is_a_size_or_a_fraction_of_the_watermark(budget: str) -> None:
    from leveret.broker.pager import message_budget

    value: float | str = float(budget) if "." in budget else budget
    resources = replace(Resources(), memory_high_watermark="8GB", message_memory_budget=value)
    assert message_budget(resources, None) == (10**9 if budget == "1GB" else 2 * 10**9)


async def test_a_failed_page_write_keeps_the_chunk_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start(tmp_path)
    client = connect(node)
    publish(client, range(300))

    def disk_full(*args: object) -> int:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "pwrite", disk_full)
        drive(node)
    queue = queue_of(node)
    assert queue.paged is not None and all(chunk.entries is not None for chunk in queue.paged.chunks)
    assert get_all(client) == fresh(range(300))
