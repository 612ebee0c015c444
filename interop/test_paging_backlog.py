"""Queues larger than memory, on a real broker process: a backlog far over `message_memory_budget` keeps
the broker's resident memory bounded, drains in order, and gives its page files back.

The slow version is the one the feature is for (10 million 1 KiB messages, ~10 GB of bodies):

    python -m pytest interop/test_paging_backlog.py -m slow -s

Leveret only: RabbitMQ pages by its own rules (and has no such setting).
"""

from __future__ import annotations

from pathlib import Path

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from interop.backlog import MIB, BudgetedLeveret, run_backlog
from interop.clients import pika_connection, unique
from interop.conftest import BROKER_KIND

pytestmark = pytest.mark.skipif(BROKER_KIND != "leveret", reason="message_memory_budget is Leveret's")

BUDGET = "8MiB"
# Over the RSS of an idle broker: the budget, a chunk or two being read back or written, socket
# buffers, and what the allocator keeps. Holding the backlog in memory instead would take ~1.25 KiB a
# message (body and bookkeeping): 250 MiB for the small test.
HEADROOM = 64 * MIB


def check(broker: BudgetedLeveret, count: int, headroom: int) -> None:
    backlog = run_backlog(broker, count, 1024)
    print(
        f"\n{count} x 1 KiB, budget {BUDGET}: RSS idle {backlog.idle_rss / MIB:.0f} MiB, peak while "
        f"publishing {backlog.publish.peak_rss / MIB:.0f} MiB, queued {backlog.queued_rss / MIB:.0f} MiB, "
        f"peak while draining {backlog.drain.peak_rss / MIB:.0f} MiB; published "
        f"{backlog.publish.rate(count):.0f}/s ({backlog.publish.cpu_us(count):.1f} µs CPU each), drained "
        f"{backlog.drain.rate(count):.0f}/s ({backlog.drain.cpu_us(count):.1f} µs CPU each), longest wait "
        f"between deliveries {backlog.longest_gap * 1000:.0f} ms"
    )
    for phase in (backlog.publish, backlog.drain):
        assert phase.peak_rss - backlog.idle_rss < headroom
    assert len(broker.page_files) <= 1  # only the file appends would go to


@pytest.fixture
def budgeted_broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    broker = BudgetedLeveret(tmp_path, BUDGET)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


def test_a_backlog_over_budget_keeps_memory_bounded(budgeted_broker: BudgetedLeveret) -> None:
    check(budgeted_broker, 200_000, HEADROOM)


@pytest.mark.slow
def test_ten_million_messages_keep_memory_bounded(budgeted_broker: BudgetedLeveret) -> None:
    # Chunk bookkeeping grows with the backlog too, by a few hundred bytes per chunk of ~800 messages.
    check(budgeted_broker, 10_000_000, HEADROOM + 32 * MIB)


SMALL_BUDGET = "2MiB"  # chunks of 256 KiB: a 2,000 message backlog is mostly on disk
GET_COUNT = 2000


@pytest.fixture
def small_budget_broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    broker = BudgetedLeveret(tmp_path, SMALL_BUDGET)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


def _get_all_in_order(channel: BlockingChannel, queue: str, count: int) -> None:
    """basic.get (no-ack) `count` times: each message, in order, not redelivered; then get-empty."""
    for expected in range(count):
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None, f"get-empty after {expected} of {count}"
        assert (int(body[:8]), method.redelivered) == (expected, False)
    assert channel.basic_get(queue, auto_ack=True)[0] is None


@pytest.mark.parametrize("durable", [False, True], ids=["transient", "persistent-after-restart"])
def test_basic_get_drains_a_queue_whose_head_is_on_disk_in_order_with_pika(
    small_budget_broker: BudgetedLeveret, durable: bool
) -> None:
    # basic.get that finds the head empty waits for the pager to read the next chunk back (off the event
    # loop); after a restart the head is what the budget had room for, the rest read back from the log.
    queue = unique("paged-get")
    padding = bytes(1016)
    with pika_connection(small_budget_broker.url) as connection:
        channel = connection.channel()
        channel.queue_declare(queue, durable=durable)
        channel.confirm_delivery()
        properties = pika.BasicProperties(delivery_mode=2 if durable else 1)
        for number in range(GET_COUNT):
            channel.basic_publish("", queue, b"%08d" % number + padding, properties)
    assert small_budget_broker.page_files or durable  # transient ones went to the page files
    if durable:
        small_budget_broker.restart()
    with pika_connection(small_budget_broker.url) as connection:
        _get_all_in_order(connection.channel(), queue, GET_COUNT)
