"""The broker's cost of one message when every message is a wake-up of its own, against RabbitMQ.

    python -m bench.wakeup                        # Leveret and RabbitMQ, ack each, 5 repeats of 3000 messages
    python -m bench.wakeup --baseline /tmp/base   # and Leveret from another tree (git archive): an A/B
    python -m bench.wakeup --mode noack --brokers leveret --count 5000

At a steady 1000 msg/s each message reaches an idle broker: what it costs then is a whole loop
iteration (epoll, the reader's task step, the read, the route, the delivery's write), not the few µs a
message costs in a batch (`bench.hotpath`). Here a producer and a consumer (raw sockets in this process,
TCP_NODELAY) play ping-pong: one publish, wait for its delivery, ack it (`--mode ack`), then wait `--gap`
(1 ms) so the broker is idle again. Per run: the broker's CPU per message (all its threads, /proc) and
the publish-to-delivery time seen by the client (p50, p99). Brokers alternate within each repeat; the
figure to compare is the CPU per message, which the machine's load disturbs less than the latency.
`--burst N` sends N publishes per round in one segment, as a client's burst reaches the broker; the latency
is then the first one's, the CPU per publish.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

from pamqp import frame, header
from pamqp.commands import Basic, Queue

from bench.latency import BaselineLeveret, percentile
from bench.procfs import cpu_seconds
from interop.brokers import Broker, LeveretBroker, RabbitMQBroker, rabbitmq_server_script
from interop.rawclient import RawClient

BODY = b"x" * 256
_FRAME_HEAD = struct.Struct(">BHI")
_DELIVERY_TAG = struct.Struct(">Q")


class _Consumer:
    """Reads whole deliveries off a raw connection: (delivery tag) once its body frame is in."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.buffer = client.buffer
        self.tag = 0

    def next_delivery(self) -> int:
        buffer = self.buffer
        while True:
            while len(buffer) >= 7:
                kind, _, size = _FRAME_HEAD.unpack_from(buffer)
                if len(buffer) < size + 8:
                    break
                if kind == 1:  # basic.deliver: class, method, then the consumer tag (short string)
                    at = 7 + 4
                    at += 1 + buffer[at]
                    (self.tag,) = _DELIVERY_TAG.unpack_from(buffer, at)
                del buffer[: size + 8]
                if kind == 3:
                    return self.tag
            data = self.client.sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the connection")
            buffer += data


def run_once(broker: Broker, mode: str, count: int, gap: float, burst: int = 1) -> tuple[float, float, float]:
    """(broker CPU µs per message, p50 ms, p99 ms of each round's first delivery) over `count` round trips
    of `burst` publishes each, sent in one segment."""
    queue = f"wakeup-{time.monotonic_ns()}"
    producer = RawClient(broker.host, broker.port)
    consumer_client = RawClient(broker.host, broker.port)
    try:
        producer.declare(queue, auto_delete=True)
        consumer_client.send(1, Basic.Qos(prefetch_count=1000))
        consumer_client.expect(Basic.QosOk)
        consumer_client.send(1, Basic.Consume(queue=queue, consumer_tag="c", no_ack=(mode == "noack")))
        consumer_client.expect(Basic.ConsumeOk)
        consumer = _Consumer(consumer_client)
        publish = (
            frame.marshal(Basic.Publish(exchange="", routing_key=queue), 1)
            + frame.marshal(header.ContentHeader(0, len(BODY), Basic.Properties(delivery_mode=1)), 1)
            + _FRAME_HEAD.pack(3, 1, len(BODY)) + BODY + b"\xce"
        )
        publishes = publish * burst
        warmup = max(100, count // 10)
        times: list[float] = []
        cpu_start = 0.0
        for number in range(warmup + count):
            if number == warmup:
                cpu_start = cpu_seconds(broker.pid)
            sent = time.perf_counter()
            producer.sock.sendall(publishes)
            tag = consumer.next_delivery()
            if number >= warmup:
                times.append(time.perf_counter() - sent)
            for _ in range(burst - 1):
                tag = consumer.next_delivery()
            if mode == "ack":
                ack = Basic.Ack(delivery_tag=tag, multiple=burst > 1)
                consumer_client.sock.sendall(frame.marshal(ack, 1))
            time.sleep(gap)
        cpu = (cpu_seconds(broker.pid) - cpu_start) / burst
        producer.send(1, Queue.Delete(queue=queue))
        producer.expect(Queue.DeleteOk)
    finally:
        producer.close()
        consumer_client.close()
    ordered = sorted(times)
    return cpu / count * 1e6, percentile(ordered, 50) * 1000, percentile(ordered, 99) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("ack", "noack"), default="ack")
    parser.add_argument("--count", type=int, default=3000, help="round trips per run (default 3000)")
    parser.add_argument("--gap", type=float, default=0.001, help="seconds idle between messages")
    parser.add_argument("--burst", type=int, default=1,
                        help="publishes per round trip, in one segment; the latency is the first one's")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--brokers", default="leveret,rabbitmq")
    parser.add_argument("--baseline", type=Path, metavar="TREE", help="also Leveret from this source tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="leveret-wakeup-") as tmp:
        root = Path(tmp)
        brokers: list[Broker] = []
        for name in args.brokers.split(","):
            if name == "leveret":
                brokers.append(LeveretBroker(root / "leveret"))
                if args.baseline is not None:
                    brokers.append(BaselineLeveret(root / "baseline", args.baseline))
            elif (script := rabbitmq_server_script()) is not None:
                brokers.append(RabbitMQBroker(root / "rabbitmq", script))
        for broker in brokers:
            broker.start()
        results: dict[str, list[tuple[float, float, float]]] = {b.kind: [] for b in brokers}
        try:
            for repeat in range(args.repeat):
                order = brokers if repeat % 2 == 0 else brokers[::-1]
                for broker in order:
                    figures = run_once(broker, args.mode, args.count, args.gap, args.burst)
                    results[broker.kind].append(figures)
                    print(f"  #{repeat + 1} {broker.kind}: {figures[0]:.1f} µs/msg, p50 {figures[1]:.3f} ms, "
                          f"p99 {figures[2]:.3f} ms (load {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            for broker in brokers:
                broker.stop()
    print(f"\nmode {args.mode}, {args.count} rounds of {args.burst} per run, medians of {args.repeat} runs:")
    for kind, rows in results.items():
        cpu, p50, p99 = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"  {kind:9s} broker CPU {cpu:6.1f} µs/msg   p50 {p50:.3f} ms   p99 {p99:.3f} ms")
    if "leveret" in results:
        for kind, rows in results.items():
            if kind != "leveret":
                ratios = [a[0] / b[0] for a, b in zip(results["leveret"], rows, strict=True)]
                print(f"  leveret/{kind} CPU per message: {statistics.median(ratios):.2f} "
                      f"({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    sys.exit(main())
