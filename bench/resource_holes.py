"""Issue 16's resource figures, on Leveret or RabbitMQ (the same client, the broker process's RSS).

    python -m bench.resource_holes stall [--broker rabbitmq] [--mb 1000]   # a consumer that stops reading
    python -m bench.resource_holes churn [--broker rabbitmq]               # 10,000 channels, 800 connections
    python -m bench.resource_holes closes --broker both [--connections 1000 --channels 10 --in-flight 2]

stall: a consumer with acks and no prefetch never reads its socket; 100 KB messages are published to its
queue under a 600 MB memory watermark. Prints the queue depth and RSS each second, then after the
consumer's connection closes. churn: RSS with 10,000 channels open (a consumer each, over 5 connections),
after closing them, 12.5 s later (one malloc_trim round later on Leveret), and the same for 800 connections.
closes: connections with channels (a consumer each holding messages unacked, or none with --in-flight 0);
RSS 0, 5 and 30 s after closing every channel, the connections kept, then after closing the connections,
then over open/close cycles; with --broker both, RabbitMQ then Leveret, and a table of what each kept.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pamqp import frame
from pamqp.commands import Basic, Channel

from interop.brokers import Broker, LeveretBroker, RabbitMQBroker, ResourceLimits, rabbitmq_server_script
from interop.fleet import ChannelFleet
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


def _rss_at(broker: Broker, marks: tuple[float, ...]) -> list[float]:
    """RSS at each of `marks` seconds from now."""
    started = time.monotonic()
    figures = []
    for mark in marks:
        time.sleep(max(0.0, started + mark - time.monotonic()))
        figures.append(_rss_mb(broker))
    return figures


AFTER = (0.0, 5.0, 30.0)


def _record_after(broker: Broker, figures: dict[str, float], what: str) -> None:
    after = _rss_at(broker, AFTER)
    figures.update({f"{what} {mark:.0f}s": rss for mark, rss in zip(AFTER, after, strict=True)})
    print(f"  {what}: " + ", ".join(f"{mark:.0f}s {rss:.1f}" for mark, rss in zip(AFTER, after, strict=True)))


def closes(broker: Broker, connections: int, channels: int, in_flight: int, cycles: int) -> dict[str, float]:
    """Mass closes: RSS idle, with the connections, with their channels (the peak), at 0/5/30 s after closing
    every channel (connections kept), and after closing the connections; then open/close cycles of the same
    fleet, RSS after each (growth per cycle is a leak, a flat line is not)."""
    time.sleep(2)
    figures = {"idle": _rss_mb(broker)}
    print(f"{broker.kind}: {connections} connections x {channels} channels, {in_flight} in flight each; "
          f"idle rss {figures['idle']:.1f} MB", flush=True)
    fleet = ChannelFleet(broker, connections, channels, in_flight)
    time.sleep(1)
    figures["connections"] = _rss_mb(broker)
    fleet.open_channels()
    time.sleep(1)
    figures["peak"] = _rss_mb(broker)
    print(f"  connections open {figures['connections']:.1f}, with channels {figures['peak']:.1f} MB")
    fleet.close_channels()
    _record_after(broker, figures, "channels closed")
    fleet.close_connections()
    _record_after(broker, figures, "connections closed")
    for cycle in range(1, cycles + 1):
        try:
            fleet = ChannelFleet(broker, connections, channels, in_flight)
            fleet.open_channels()
            peak = _rss_mb(broker)
            fleet.close_channels()
            fleet.close_connections()
        except ConnectionError as error:  # RabbitMQ, on a loaded machine, has reset connections here
            print(f"  cycle {cycle}: {error!r}; no more cycles")
            break
        time.sleep(5)  # RabbitMQ finishes its closes after close-ok
        figures[f"cycle {cycle}"] = _rss_mb(broker)
        print(f"  cycle {cycle}: open {peak:.1f}, closed {figures[f'cycle {cycle}']:.1f} MB", flush=True)
    if cycles:
        figures["cycles +12s"] = _rss_at(broker, (12.0,))[0]
        print(f"  12 s after the cycles: {figures['cycles +12s']:.1f} MB")
    return figures


def _closes_table(results: dict[str, dict[str, float]]) -> None:
    """What each broker kept above its idle RSS, in MB, side by side."""
    kinds = list(results)
    print("\nMB above idle | " + " | ".join(kinds))
    for row in dict.fromkeys(row for figures in results.values() for row in figures if row != "idle"):
        cells = (f"{r[row] - r['idle']:.1f}" if row in r else "-" for r in results.values())
        print(f"{row} | " + " | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("stall", "churn", "closes"))
    parser.add_argument("--broker", choices=("leveret", "rabbitmq", "both"), default="leveret",
                        help="both: RabbitMQ, then Leveret, in one run (closes only)")
    parser.add_argument("--mb", type=int, default=1000, help="stall: megabytes published")
    parser.add_argument("--connections", type=int, default=1000, help="closes")
    parser.add_argument("--channels", type=int, default=10, help="closes: per connection")
    parser.add_argument("--in-flight", type=int, default=2, help="closes: unacked per channel")
    parser.add_argument("--cycles", type=int, default=5, help="closes: open/close cycles after the first")
    args = parser.parse_args()
    stalling = args.what == "stall"
    limits = ResourceLimits(memory_high_watermark=600_000_000) if stalling else ResourceLimits()
    results: dict[str, dict[str, float]] = {}
    for kind in ("rabbitmq", "leveret") if args.broker == "both" else (args.broker,):
        with tempfile.TemporaryDirectory(prefix="resource-holes-") as workdir:
            broker = _broker(kind, Path(workdir), limits)
            broker.start()
            try:
                if stalling:
                    stall(broker, args.mb)
                elif args.what == "churn":
                    churn(broker)
                else:
                    results[kind] = closes(
                        broker, args.connections, args.channels, args.in_flight, args.cycles
                    )
            finally:
                broker.close()
    if results:
        _closes_table(results)
        print(f"load average {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
