"""kill -9 of the broker at random moments under load, in a loop, and what survives each crash.

Publishers (pika, one thread and one durable queue each, confirms on) and a consumer (acking every
message; one queue is left to build a backlog until the end) run against a broker that is killed and
restarted. Every delivery and every ack sent is recorded
with the broker incarnation ("epoch") it happened in. What the broker promises, checked at the end:

- every confirmed message is delivered at least once, and nothing is delivered that was never published;
- the first delivery of a message in the epoch it was published in is not flagged redelivered, and every
  delivery of a message recovered from an earlier epoch is: after a crash the broker cannot know which
  messages reached a client, so like RabbitMQ's classic queues it flags them all;
- an acknowledged message never comes back in the epoch it was acked in; after a crash it may, flagged
  redelivered, only if the ack was sent in the last moments before the kill (Leveret writes acks with the
  next group commit, so ACK_WINDOW bounds those moments; RabbitMQ writes its index lazily, so the window
  is Leveret's promise only);
- within an epoch, each queue delivers its single publisher's messages in publish order.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError, NackError
from pika.spec import Basic, BasicProperties

from interop.brokers import Broker
from interop.clients import pika_connection, queue_depth, unique, wait_until
from interop.conftest import BROKER_KIND

PERSISTENT = BasicProperties(delivery_mode=2)
QUEUES = 3
PREFETCH = 50
# How long before a kill an ack may have been sent and still be lost with it (Leveret: one group commit).
ACK_WINDOW = 0.5 if BROKER_KIND == "leveret" else None
# Each epoch runs until every publisher has this many confirms, then a random while longer before the kill.
MIN_CONFIRMS = 30
EXTRA_RUN = (0.5, 1.5)


@dataclass
class Delivery:
    queue: str
    number: int
    redelivered: bool
    epoch: int


@dataclass
class Ledger:
    """What the clients saw, across every epoch. Threads append; the test reads once they are done."""

    attempted: dict[str, dict[int, int]] = field(default_factory=dict)  # queue -> number -> epoch published
    confirmed: dict[str, set[int]] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    # (queue, number) -> every ack sent for it, as (epoch, when)
    acked: dict[tuple[str, int], list[tuple[int, float]]] = field(default_factory=dict)
    killed_at: dict[int, float] = field(default_factory=dict)  # epoch -> when its broker was killed


class Publisher(threading.Thread):
    """Persistent messages numbered upward with confirms, until its connection dies or it is stopped."""

    def __init__(self, url: str, queue: str, ledger: Ledger, epoch: int) -> None:
        super().__init__(daemon=True)
        self.url, self.queue, self.ledger, self.epoch = url, queue, ledger, epoch
        self.attempted = ledger.attempted.setdefault(queue, {})
        self.confirmed = ledger.confirmed.setdefault(queue, set())
        self.next = max(self.attempted, default=0) + 1
        self.confirmed_here = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            with pika_connection(self.url) as connection:
                channel = connection.channel()
                channel.confirm_delivery()
                while not self.stopping.is_set():
                    number, self.next = self.next, self.next + 1
                    self.attempted[number] = self.epoch
                    try:
                        channel.basic_publish("", self.queue, str(number).encode(), PERSISTENT)
                    except NackError:
                        continue  # not stored: the broker owes it nothing
                    self.confirmed.add(number)
                    self.confirmed_here += 1
        except (AMQPError, OSError):
            return  # the broker was killed under us


class Consumer(threading.Thread):
    """Consumes every queue, acking each delivery right after recording it."""

    def __init__(self, url: str, queues: list[str], ledger: Ledger, epoch: int) -> None:
        super().__init__(daemon=True)
        self.url, self.queues, self.ledger, self.epoch = url, queues, ledger, epoch
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            with pika_connection(self.url) as connection:
                channel = connection.channel()
                channel.basic_qos(prefetch_count=PREFETCH)
                for queue in self.queues:
                    channel.basic_consume(queue, self._on_message)
                while not self.stopping.is_set():
                    connection.process_data_events(time_limit=0.05)
        except (AMQPError, OSError):
            return

    def _on_message(
        self, channel: BlockingChannel, method: Basic.Deliver, _props: BasicProperties, body: bytes
    ) -> None:
        queue, number = method.routing_key, int(body)
        self.ledger.deliveries.append(Delivery(queue, number, method.redelivered, self.epoch))
        channel.basic_ack(method.delivery_tag)
        self.ledger.acked.setdefault((queue, number), []).append((self.epoch, time.monotonic()))


def run_clients(
    broker: Broker, queues: list[str], ledger: Ledger, epoch: int, *, last: bool
) -> tuple[list[Publisher], Consumer]:
    """A publisher per queue and one consumer, once every publisher has MIN_CONFIRMS confirms. The last
    queue is consumed only in the last epoch: its backlog is recovered again after every kill."""
    publishers = [Publisher(broker.url, queue, ledger, epoch) for queue in queues]
    consumer = Consumer(broker.url, queues if last else queues[:-1], ledger, epoch)
    for thread in (*publishers, consumer):
        thread.start()
    wait_until(
        lambda: all(p.confirmed_here >= MIN_CONFIRMS for p in publishers),
        timeout=30,
        what=f"{MIN_CONFIRMS} confirms per publisher in epoch {epoch}",
    )
    return publishers, consumer


def crash_loop(broker: Broker, kills: int, seed: int) -> Ledger:
    # Shown when the test fails. The seed fixes the kill delays; the load around them still varies.
    print(f"crash loop seed {seed}: rerun with LEVERET_CRASH_SEED={seed}")
    chance = random.Random(seed)
    queues = [unique(f"crash{i}") for i in range(QUEUES)]
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        for queue in queues:
            channel.queue_declare(queue, durable=True)
    ledger = Ledger()
    for epoch in range(kills):
        publishers, consumer = run_clients(broker, queues, ledger, epoch, last=False)
        time.sleep(chance.uniform(*EXTRA_RUN))
        ledger.killed_at[epoch] = time.monotonic()
        broker.kill()
        for thread in (*publishers, consumer):
            thread.join(30)
            assert not thread.is_alive(), f"{thread} outlived the broker"
        broker.start()

    # The last epoch: publish a little more, then consume until everything confirmed has come.
    publishers, consumer = run_clients(broker, queues, ledger, kills, last=True)
    for publisher in publishers:
        publisher.stopping.set()
        publisher.join(30)

    def all_delivered() -> bool:
        seen = {(d.queue, d.number) for d in list(ledger.deliveries)}
        return all((queue, n) in seen for queue in queues for n in ledger.confirmed[queue])

    with contextlib.suppress(AssertionError):  # a timeout here: `check` names what was lost
        wait_until(all_delivered, timeout=20, what="every confirmed message delivered")
    consumer.stopping.set()
    consumer.join(30)
    with pika_connection(broker.url) as connection:
        channel = connection.channel()
        # FIFO: whatever survived unconfirmed came before the last confirmed message of its queue.
        assert {queue: queue_depth(channel, queue) for queue in queues} == dict.fromkeys(queues, 0)
        for queue in queues:
            channel.queue_delete(queue)
    return ledger


def check(ledger: Ledger) -> None:
    seen_in_epoch: dict[tuple[str, int, int], bool] = {}
    last_in_epoch: dict[tuple[str, int], int] = {}
    for d in ledger.deliveries:
        published_in = ledger.attempted[d.queue].get(d.number)
        assert published_in is not None, f"{d}: never published"
        key = (d.queue, d.number, d.epoch)
        assert key not in seen_in_epoch, f"{d}: delivered twice by one broker run"
        seen_in_epoch[key] = True
        if d.epoch == published_in:
            assert not d.redelivered, f"{d}: first delivery flagged redelivered"
        else:
            assert d.redelivered, f"{d}: recovered after a crash but not flagged redelivered"
        previous = last_in_epoch.get((d.queue, d.epoch), 0)
        assert d.number > previous, f"{d}: out of publish order after {previous}"
        last_in_epoch[(d.queue, d.epoch)] = d.number

        for ack_epoch, sent in ledger.acked.get((d.queue, d.number), []):
            if ack_epoch < d.epoch and ACK_WINDOW is not None:
                before_kill = ledger.killed_at[ack_epoch] - sent
                assert before_kill < ACK_WINDOW, f"{d}: acked {before_kill:.2f}s before a kill, yet back"

    delivered = {(d.queue, d.number) for d in ledger.deliveries}
    for queue, numbers in ledger.confirmed.items():
        lost = sorted(n for n in numbers if (queue, n) not in delivered)
        assert not lost, f"confirmed messages of {queue} never delivered: {lost[:20]}"


def seed() -> int:
    return int(os.environ.get("LEVERET_CRASH_SEED") or random.randrange(1 << 30))


def test_confirmed_messages_survive_three_kills(private_broker: Callable[..., Broker]) -> None:
    check(crash_loop(private_broker(), kills=3, seed=seed()))


@pytest.mark.slow
def test_confirmed_messages_survive_twenty_kills(private_broker: Callable[..., Broker]) -> None:
    check(crash_loop(private_broker(), kills=20, seed=seed()))
