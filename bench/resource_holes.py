"""Issue 16's resource figures, on Leveret or RabbitMQ (the same client, the broker process's RSS).

    python -m bench.resource_holes stall [--broker rabbitmq] [--mb 1000]   # a consumer that stops reading
    python -m bench.resource_holes churn [--broker rabbitmq]               # 10,000 channels, 800 connections

stall: a consumer with acks and no prefetch never reads its socket; 100 KB messages are published to its
queue under a 600 MB memory watermark. Prints the queue depth and RSS each second, then after the
consumer's connection closes. churn: RSS with 10,000 channels open (a consumer each, over 5 connections),
after closing them, 12.5 s later (one malloc_trim round later on Leveret), and the same for 800 connections.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pamqp import frame
from pamqp.commands import Basic, Channel

from interop.brokers import Broker, LeveretBroker, RabbitMQBroker, ResourceLimits, rabbitmq_server_script
from interop.rawclient import RawClient

CHANNELS_PER_CONNECTION = 2000


def _broker(kind: str, workdir: Path, limits: ResourceLimits) -> Broker:
    if kind == "rabbitmq":
        script = rabbitmq_server_script()
        if script is None:
            raise SystemExit("rabbitmq-server is not installed")
        return RabbitMQBroker(workdir, script, limits)
    return LeveretBroker(workdir, limits)


def _rss_mb(broker: Broker) -> float:
    pid = broker.pid
    if isinstance(broker, RabbitMQBroker):
        found = subprocess.run(
            ["pgrep", "-f", f"beam.smp.*{broker.nodename}"], capture_output=True, text=True
        ).stdout.split()
        pid = int(found[0]) if found else pid
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6


def stall(broker: Broker, megabytes: int) -> None:
    consumer = RawClient(broker.host, broker.port)
    consumer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    consumer.declare("stalled")
    consumer.send(1, Basic.Consume(queue="stalled", consumer_tag="stalled"))
    consumer.expect(Basic.ConsumeOk)
    publisher = RawClient(broker.host, broker.port)
    count = megabytes * 10**6 // 100_000
    started = time.monotonic()
    publisher.publish("stalled", range(count), 100_000)
    print(f"published {count} x 100 KB in {time.monotonic() - started:.1f} s; rss {_rss_mb(broker):.0f} MB")
    for second in range(1, 6):
        time.sleep(1)
        print(f"t+{second}s depth {publisher.declare('stalled', passive=True)} rss {_rss_mb(broker):.0f} MB")
    consumer.close()
    time.sleep(2)
    print(f"consumer gone: depth {publisher.declare('stalled', passive=True)} rss {_rss_mb(broker):.0f} MB")


def churn(broker: Broker) -> None:
    print(f"start: rss {_rss_mb(broker):.1f} MB")
    clients = [RawClient(broker.host, broker.port) for _ in range(5)]
    numbers = range(2, CHANNELS_PER_CONNECTION + 2)
    for client in clients:
        client.declare("churn")
        client.sock.sendall(b"".join(frame.marshal(Channel.Open(), n) for n in numbers))
        for _ in numbers:
            client.expect(Channel.OpenOk)
        client.sock.sendall(b"".join(
            frame.marshal(Basic.Qos(prefetch_count=10), n) + frame.marshal(Basic.Consume(queue="churn"), n)
            for n in numbers
        ))
        for _ in range(2 * len(numbers)):
            client.receive()
    time.sleep(1.5)
    print(f"{5 * len(numbers)} channels open: rss {_rss_mb(broker):.1f} MB")
    close = Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0)
    for client in clients:
        client.sock.sendall(b"".join(frame.marshal(close, n) for n in numbers))
        for _ in numbers:
            client.expect(Channel.CloseOk)
    time.sleep(1.5)
    print(f"closed: rss {_rss_mb(broker):.1f} MB")
    time.sleep(11)
    print(f"12.5 s later: rss {_rss_mb(broker):.1f} MB")
    many = [RawClient(broker.host, broker.port) for _ in range(800)]
    time.sleep(1)
    print(f"800 more connections open: rss {_rss_mb(broker):.1f} MB")
    for client in many + clients:
        client.close()
    time.sleep(1.5)
    print(f"all closed: rss {_rss_mb(broker):.1f} MB")
    time.sleep(11)
    print(f"12.5 s later: rss {_rss_mb(broker):.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("stall", "churn"))
    parser.add_argument("--broker", choices=("leveret", "rabbitmq"), default="leveret")
    parser.add_argument("--mb", type=int, default=1000, help="stall: megabytes published")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="resource-holes-") as workdir:
        stalling = args.what == "stall"
        limits = ResourceLimits(memory_high_watermark=600_000_000) if stalling else ResourceLimits()
        broker = _broker(args.broker, Path(workdir), limits)
        broker.start()
        try:
            stall(broker, args.mb) if stalling else churn(broker)
        finally:
            broker.close()


if __name__ == "__main__":
    main()
