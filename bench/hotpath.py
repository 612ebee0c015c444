"""The hot path in process: publish -> route -> deliver -> ack through two ConnectionSessions, no sockets.

One publisher connection sends batches of 100 publishes (256-byte bodies, delivery mode 1 as the
bench's load generator sets it) to a plain queue; one consumer
connection (prefetch 1000, manual acks) takes the deliveries and acks every 100 with `multiple`. What is
measured is the broker's own work per message: frame parsing, routing, the queue, delivery encoding, acks.
Process CPU time, best of 5 runs, in µs per message:

    python -m bench.hotpath               # from the repository root; 50000 messages per run
    python -m bench.hotpath 200000        # more per run
    python -m bench.hotpath --profile     # one run under cProfile, the top functions by own time

Figures swing by ~25% on a shared machine: compare changes by alternating runs of each version.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

from pamqp import body as pamqp_body
from pamqp import frame, header
from pamqp.commands import Basic, Queue

from leveret.broker.node import Node
from leveret.broker.session.connection import ConnectionSession
from leveret.config import Config
from tests.peers import ClientPeer

BATCH = 100
BODY = b"x" * 256


def setup() -> tuple[ConnectionSession, ConnectionSession]:
    node = Node(Config())
    publisher = ClientPeer(ConnectionSession(node, "publisher", from_loopback=True))
    consumer = ClientPeer(ConnectionSession(node, "consumer", from_loopback=True))
    for peer in (publisher, consumer):
        peer.handshake()
        peer.open_channel(1)
    publisher.method(1, Queue.Declare(queue="q"))
    consumer.method(1, Basic.Qos(prefetch_count=1000))
    consumer.method(1, Basic.Consume(queue="q", consumer_tag="c", no_ack=False))
    return publisher.server, consumer.server


def run(publisher: ConnectionSession, consumer: ConnectionSession, count: int, first_tag: int) -> None:
    one = (
        frame.marshal(Basic.Publish(exchange="", routing_key="q"), 1)
        + frame.marshal(header.ContentHeader(0, len(BODY), Basic.Properties(delivery_mode=1)), 1)
        + frame.marshal(pamqp_body.ContentBody(BODY), 1)
    )
    batch = one * BATCH
    acks = [
        frame.marshal(Basic.Ack(delivery_tag=first_tag + tag, multiple=True), 1)
        for tag in range(BATCH - 1, count, BATCH)
    ]
    for ack in acks:
        publisher.receive_data(batch)
        publisher.data_to_send()
        consumer.data_to_send()
        consumer.receive_data(ack)


def main() -> None:
    args = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
    count = int(args[0]) if args else 50_000
    count -= count % BATCH
    publisher, consumer = setup()
    if "--profile" in sys.argv:
        profile = cProfile.Profile()
        started = time.process_time()
        profile.runcall(run, publisher, consumer, count, 1)
        elapsed = time.process_time() - started
        pstats.Stats(profile).sort_stats("tottime").print_stats(18)
        print(f"{count} messages: {elapsed / count * 1e6:.2f} µs/msg (profiled)")
        return
    best = float("inf")
    for attempt in range(5):
        started = time.process_time()
        run(publisher, consumer, count, attempt * count + 1)
        best = min(best, time.process_time() - started)
    channel = consumer.channels[1]
    assert not channel.closed and not channel.unacked, "the consumer fell behind or its channel closed"
    print(f"{count} messages: best of 5 {best / count * 1e6:.2f} µs/msg")


if __name__ == "__main__":
    main()
