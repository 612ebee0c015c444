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
from pamqp.commands import Basic, Channel, Connection

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


class _Fleet:
    """`connections` raw clients with `channels` channels each beyond channel 1; with consumers, each channel
    consumes its connection's queue with `in_flight` messages delivered and unacked."""

    def __init__(self, broker: Broker, connections: int, channels: int, in_flight: int) -> None:
        self.numbers = range(2, channels + 2)
        self.clients = [RawClient(broker.host, broker.port) for _ in range(connections)]
        for index, client in enumerate(self.clients):
            client.sock.sendall(b"".join(frame.marshal(Channel.Open(), n) for n in self.numbers))
            for _ in self.numbers:
                client.expect(Channel.OpenOk)
            if not in_flight:
                continue
            queue = f"closes-{index}"
            client.declare(queue, auto_delete=True)
            client.sock.sendall(b"".join(
                frame.marshal(Basic.Qos(prefetch_count=in_flight), n)
                + frame.marshal(Basic.Consume(queue=queue), n)
                for n in self.numbers
            ))
            for _ in range(2 * len(self.numbers)):
                client.receive()
            client.publish(queue, range(in_flight * channels), 1000)
        for client in self.clients:  # each delivery is three frames: method, header, body
            for _ in range(3 * in_flight * channels):
                client.receive()

    def close_channels(self) -> None:
        close = Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0)
        for client in self.clients:
            client.sock.sendall(b"".join(frame.marshal(close, n) for n in self.numbers))
        for client in self.clients:
            for _ in self.numbers:
                client.expect(Channel.CloseOk)

    def close_connections(self) -> None:
        close = Connection.Close(reply_code=200, reply_text="", class_id=0, method_id=0)
        for client in self.clients:
            client.send(0, close)
        for client in self.clients:
            client.expect(Connection.CloseOk)
            client.close()


def _rss_after(broker: Broker, what: str, marks: tuple[float, ...] = (0.0, 5.0, 30.0)) -> None:
    started = time.monotonic()
    figures = []
    for mark in marks:
        time.sleep(max(0.0, started + mark - time.monotonic()))
        figures.append(f"{mark:.0f}s {_rss_mb(broker):.1f}")
    print(f"  {what}: rss MB " + ", ".join(figures), flush=True)


def closes(broker: Broker, connections: int, channels: int, in_flight: int, cycles: int) -> None:
    """Mass closes: RSS at the peak and 0/5/30 s after closing every channel, then every connection; then
    open/close cycles of the same fleet, RSS after each (growth per cycle is a leak, a flat line is not)."""
    time.sleep(2)
    print(f"{broker.kind}: {connections} connections x {channels} channels, {in_flight} in flight each; "
          f"idle rss {_rss_mb(broker):.1f} MB", flush=True)
    fleet = _Fleet(broker, connections, channels, in_flight)
    time.sleep(1)
    print(f"  open: rss {_rss_mb(broker):.1f} MB", flush=True)
    fleet.close_channels()
    _rss_after(broker, "channels closed, connections open")
    fleet.close_connections()
    _rss_after(broker, "connections closed")
    for cycle in range(1, cycles + 1):
        fleet = _Fleet(broker, connections, channels, in_flight)
        peak = _rss_mb(broker)
        fleet.close_channels()
        fleet.close_connections()
        time.sleep(1)
        print(f"  cycle {cycle}: open {peak:.1f}, closed {_rss_mb(broker):.1f} MB", flush=True)
    if cycles:
        _rss_after(broker, "after the cycles", (12.0,))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("stall", "churn", "closes"))
    parser.add_argument("--broker", choices=("leveret", "rabbitmq"), default="leveret")
    parser.add_argument("--mb", type=int, default=1000, help="stall: megabytes published")
    parser.add_argument("--connections", type=int, default=1000, help="closes")
    parser.add_argument("--channels", type=int, default=10, help="closes: per connection")
    parser.add_argument("--in-flight", type=int, default=2, help="closes: unacked per channel; 0: no consumers")
    parser.add_argument("--cycles", type=int, default=5, help="closes: open/close cycles after the first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="resource-holes-") as workdir:
        stalling = args.what == "stall"
        limits = ResourceLimits(memory_high_watermark=600_000_000) if stalling else ResourceLimits()
        broker = _broker(args.broker, Path(workdir), limits)
        broker.start()
        try:
            if stalling:
                stall(broker, args.mb)
            elif args.what == "churn":
                churn(broker)
            else:
                closes(broker, args.connections, args.channels, args.in_flight, args.cycles)
        finally:
            broker.close()


if __name__ == "__main__":
    main()
